package org.tensorflow.lite;

/** COMPILE-ONLY STUB (see Interpreter). */
public interface Delegate {
    long getNativeHandle();
}
