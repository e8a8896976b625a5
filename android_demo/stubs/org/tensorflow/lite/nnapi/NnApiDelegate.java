package org.tensorflow.lite.nnapi;

import org.tensorflow.lite.Delegate;

/**
 * COMPILE-ONLY STUB of org.tensorflow:tensorflow-lite's NnApiDelegate (see org.tensorflow.lite.Interpreter).
 * NNAPI is deprecated from Android 15.
 */
public class NnApiDelegate implements Delegate, AutoCloseable {
    public NnApiDelegate() { throw new UnsupportedOperationException("compile-only stub"); }

    @Override
    public long getNativeHandle() { throw new UnsupportedOperationException("compile-only stub"); }

    @Override
    public void close() { throw new UnsupportedOperationException("compile-only stub"); }
}
