package org.tensorflow.lite;

/** COMPILE-ONLY STUB (see Interpreter): the constants the app compares with, resolved by name at run time. */
public enum DataType {
    FLOAT32, INT32, UINT8, INT64, INT8
}
