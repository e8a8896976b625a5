package dev.edgekit.demo.core;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;

/** Locates android_demo/testdata: -Dedgekit.testdata=DIR, else ../testdata (Gradle runs in app/), else testdata. */
final class TestData {
    private TestData() {}

    static File dir() {
        String prop = System.getProperty("edgekit.testdata");
        File[] candidates = prop != null
                ? new File[] {new File(prop)}
                : new File[] {new File("../testdata"), new File("testdata"), new File("android_demo/testdata")};
        for (File f : candidates) {
            if (new File(f, "vectors.json").isFile()) {
                return f;
            }
        }
        throw new IllegalStateException("android_demo/testdata not found (tried " + candidates[0].getAbsolutePath()
                + "); pass -Dedgekit.testdata=PATH");
    }

    static File file(String name) {
        return new File(dir(), name);
    }

    static String text(String name) throws IOException {
        return new String(Files.readAllBytes(file(name).toPath()), StandardCharsets.UTF_8);
    }

    static byte[] bytes(String name) throws IOException {
        return Files.readAllBytes(file(name).toPath());
    }
}
