package dev.edgekit.demo;

import dev.edgekit.demo.core.BundleManifest;
import dev.edgekit.demo.core.Quant;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;
import org.tensorflow.lite.DataType;
import org.tensorflow.lite.Delegate;
import org.tensorflow.lite.Interpreter;
import org.tensorflow.lite.Tensor;
import org.tensorflow.lite.gpu.CompatibilityList;
import org.tensorflow.lite.gpu.GpuDelegate;
import org.tensorflow.lite.nnapi.NnApiDelegate;

/**
 * One .tflite from the bundle in a TFLite Interpreter with the chosen delegate. Inputs and
 * outputs are found by their names in the manifest's signature (edgekit records, per spec
 * input, its name inside the "serving_default" signature), never by position.
 *
 * <p>The only class of the app that touches org.tensorflow.lite. Not thread-safe: use from one
 * worker thread.
 */
final class TfliteRunner implements AutoCloseable {

    enum Accel {
        CPU("CPU (XNNPACK)"),
        GPU("GPU delegate"),
        NNAPI("NNAPI (deprecated from Android 15)");

        final String title;

        Accel(String title) {
            this.title = title;
        }

        @Override
        public String toString() {
            return title;
        }
    }

    /** Scores of one run, dequantized to float, plus timings. */
    static final class Output {
        final float[] scores;
        final double firstRunMs;
        final double medianMs;
        final double minMs;
        final int runs;

        Output(float[] scores, double firstRunMs, double medianMs, double minMs, int runs) {
            this.scores = scores;
            this.firstRunMs = firstRunMs;
            this.medianMs = medianMs;
            this.minMs = minMs;
            this.runs = runs;
        }
    }

    private final Interpreter interpreter;
    private final Delegate delegate; // closed with the interpreter; null for CPU
    private final String signature;
    private final String inputName;
    private final String outputName;
    private final Tensor input;
    private final Tensor output;
    final Accel accel;
    final String description;

    TfliteRunner(ByteBuffer model, BundleManifest manifest, BundleManifest.Artifact artifact, Accel accel, int threads) {
        this.accel = accel;
        Interpreter.Options options = new Interpreter.Options();
        options.setNumThreads(threads);
        Delegate d = null;
        switch (accel) {
            case GPU: {
                CompatibilityList compat = new CompatibilityList();
                try {
                    if (!compat.isDelegateSupportedOnThisDevice()) {
                        throw new IllegalStateException("the TFLite GPU delegate does not support this device's GPU; choose CPU");
                    }
                } finally {
                    compat.close();
                }
                d = new GpuDelegate();
                options.addDelegate(d);
                break;
            }
            case NNAPI:
                d = new NnApiDelegate();
                options.addDelegate(d);
                break;
            default:
                options.setUseXNNPACK(true);
        }
        this.delegate = d;
        Interpreter interp;
        try {
            interp = new Interpreter(model, options);
        } catch (RuntimeException e) {
            closeDelegate(d);
            throw e;
        }
        this.interpreter = interp;
        try {
            this.signature = artifact.signature != null ? artifact.signature : "serving_default";
            if (!Arrays.asList(interp.getSignatureKeys()).contains(signature)) {
                throw new IllegalStateException(artifact.path + " has signatures " + Arrays.toString(interp.getSignatureKeys())
                        + ", the manifest names " + signature + ": re-export the bundle");
            }
            BundleManifest.TensorSpec in = manifest.inputs.get(0);
            BundleManifest.TensorSpec out = manifest.outputs.get(0);
            this.inputName = artifact.runtimeInput(in.name);
            this.outputName = artifact.runtimeOutput(out.name);
            this.input = interp.getInputTensorFromSignature(inputName, signature);
            this.output = interp.getOutputTensorFromSignature(outputName, signature);
            if (input.numElements() != in.numElements()) {
                throw new IllegalStateException("input " + inputName + " has shape " + Arrays.toString(input.shape())
                        + " in the file, " + Arrays.toString(in.shape) + " in the manifest");
            }
        } catch (RuntimeException e) {
            close();
            throw e;
        }
        this.description = artifact.path + " [" + artifact.precision + "] input " + inputName + " "
                + input.dataType() + Arrays.toString(input.shape()) + ", output " + outputName + " " + output.dataType()
                + Arrays.toString(output.shape()) + " on " + accel.title;
    }

    /** Feed the preprocessed image (float32, the spec's layout), run warmup + timed runs. */
    Output run(float[] x, int timedRuns) {
        ByteBuffer in = toInputBuffer(x);
        ByteBuffer out = ByteBuffer.allocateDirect(output.numBytes()).order(ByteOrder.nativeOrder());
        Map<String, Object> ins = new HashMap<String, Object>();
        ins.put(inputName, in);
        Map<String, Object> outs = new HashMap<String, Object>();
        outs.put(outputName, out);

        long t0 = System.nanoTime();
        interpreter.runSignature(ins, outs, signature); // first run: delegate kernels are prepared here
        double first = (System.nanoTime() - t0) / 1e6;
        float[] scores = fromOutputBuffer(out);
        double[] times = new double[Math.max(1, timedRuns)];
        for (int i = 0; i < times.length; i++) {
            in.rewind();
            out.rewind();
            long t = System.nanoTime();
            interpreter.runSignature(ins, outs, signature);
            times[i] = (System.nanoTime() - t) / 1e6;
        }
        Arrays.sort(times);
        return new Output(scores, first, times[times.length / 2], times[0], times.length);
    }

    private ByteBuffer toInputBuffer(float[] x) {
        DataType t = input.dataType();
        if (t == DataType.FLOAT32) {
            ByteBuffer b = ByteBuffer.allocateDirect(4 * x.length).order(ByteOrder.nativeOrder());
            b.asFloatBuffer().put(x);
            return b;
        }
        if (t == DataType.INT8 || t == DataType.UINT8) {
            Tensor.QuantizationParams q = input.quantizationParams();
            byte[] bytes = Quant.quantize(x, q.getScale(), q.getZeroPoint(), t == DataType.UINT8);
            ByteBuffer b = ByteBuffer.allocateDirect(bytes.length).order(ByteOrder.nativeOrder());
            b.put(bytes);
            b.rewind();
            return b;
        }
        throw new IllegalStateException("input " + inputName + " is " + t + "; this demo feeds float32, int8 or uint8");
    }

    private float[] fromOutputBuffer(ByteBuffer out) {
        out.rewind();
        DataType t = output.dataType();
        if (t == DataType.FLOAT32) {
            float[] f = new float[output.numElements()];
            out.asFloatBuffer().get(f);
            return f;
        }
        if (t == DataType.INT8 || t == DataType.UINT8) {
            byte[] bytes = new byte[output.numElements()];
            out.get(bytes);
            Tensor.QuantizationParams q = output.quantizationParams();
            return Quant.dequantize(bytes, q.getScale(), q.getZeroPoint(), t == DataType.UINT8);
        }
        throw new IllegalStateException("output " + outputName + " is " + t + "; this demo reads float32, int8 or uint8");
    }

    private static void closeDelegate(Delegate d) {
        if (d instanceof GpuDelegate) {
            ((GpuDelegate) d).close();
        } else if (d instanceof NnApiDelegate) {
            ((NnApiDelegate) d).close();
        }
    }

    @Override
    public void close() {
        interpreter.close();
        closeDelegate(delegate); // after the interpreter, which uses it
    }
}
