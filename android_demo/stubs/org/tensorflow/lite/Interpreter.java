package org.tensorflow.lite;

import java.nio.ByteBuffer;
import java.util.Map;

/**
 * COMPILE-ONLY STUB of the TensorFlow Lite (LiteRT) Java API: only the members the demo app calls,
 * with the descriptors of org.tensorflow:tensorflow-lite 2.16 (Options setters return
 * Interpreter.Options; Tensor is an interface). build_apk.sh compiles against it and never packages
 * it: the APK built here has no TFLite runtime. The Gradle build uses the real AAR instead.
 */
public final class Interpreter implements AutoCloseable {
    private static RuntimeException stub() {
        return new UnsupportedOperationException("compile-only stub of org.tensorflow.lite: build with Gradle for the real runtime");
    }

    public static class Options {
        public Options() {}

        public Options setNumThreads(int numThreads) { throw stub(); }

        public Options setUseXNNPACK(boolean useXNNPACK) { throw stub(); }

        public Options setUseNNAPI(boolean useNNAPI) { throw stub(); }

        public Options addDelegate(Delegate delegate) { throw stub(); }
    }

    public Interpreter(ByteBuffer byteBuffer, Options options) { throw stub(); }

    public String[] getSignatureKeys() { throw stub(); }

    public Tensor getInputTensorFromSignature(String inputName, String signatureKey) { throw stub(); }

    public Tensor getOutputTensorFromSignature(String outputName, String signatureKey) { throw stub(); }

    public void runSignature(Map<String, Object> inputs, Map<String, Object> outputs, String signatureKey) { throw stub(); }

    public Long getLastNativeInferenceDurationNanoseconds() { throw stub(); }

    @Override
    public void close() { throw stub(); }
}
