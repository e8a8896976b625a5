package org.tensorflow.lite.gpu;

import java.io.Closeable;
import org.tensorflow.lite.Delegate;

/** COMPILE-ONLY STUB of org.tensorflow:tensorflow-lite-gpu's GpuDelegate (see org.tensorflow.lite.Interpreter). */
public class GpuDelegate implements Delegate, Closeable {
    public GpuDelegate() { throw new UnsupportedOperationException("compile-only stub"); }

    @Override
    public long getNativeHandle() { throw new UnsupportedOperationException("compile-only stub"); }

    @Override
    public void close() { throw new UnsupportedOperationException("compile-only stub"); }
}
