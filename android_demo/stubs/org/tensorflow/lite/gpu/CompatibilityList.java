package org.tensorflow.lite.gpu;

import java.io.Closeable;

/** COMPILE-ONLY STUB of org.tensorflow:tensorflow-lite-gpu's CompatibilityList (see org.tensorflow.lite.Interpreter). */
public class CompatibilityList implements Closeable {
    public CompatibilityList() { throw new UnsupportedOperationException("compile-only stub"); }

    public boolean isDelegateSupportedOnThisDevice() { throw new UnsupportedOperationException("compile-only stub"); }

    @Override
    public void close() { throw new UnsupportedOperationException("compile-only stub"); }
}
