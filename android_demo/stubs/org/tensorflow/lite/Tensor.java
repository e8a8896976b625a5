package org.tensorflow.lite;

/** COMPILE-ONLY STUB (see Interpreter): an interface since TensorFlow Lite 2.7, as here. */
public interface Tensor {
    DataType dataType();

    int[] shape();

    int numBytes();

    int numElements();

    QuantizationParams quantizationParams();

    class QuantizationParams {
        public QuantizationParams(float scale, int zeroPoint) {
            throw new UnsupportedOperationException("compile-only stub");
        }

        public float getScale() { throw new UnsupportedOperationException("compile-only stub"); }

        public int getZeroPoint() { throw new UnsupportedOperationException("compile-only stub"); }
    }
}
