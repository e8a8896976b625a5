package dev.edgekit.demo.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.util.Arrays;
import java.util.List;
import org.junit.Test;

/** BundleManifest on a real manifest written by `edgekit export tiny_cnn --targets tflite`, and on edits of it. */
public class BundleManifestTest {

    static String real() throws Exception {
        return TestData.text("manifest_tiny_cnn.json");
    }

    static void assertRejected(String json, String expectedFragment) {
        try {
            BundleManifest.parse(json);
            fail("accepted a manifest that should fail with: " + expectedFragment);
        } catch (ManifestException e) {
            assertTrue("message \"" + e.getMessage() + "\" lacks \"" + expectedFragment + "\"",
                    e.getMessage().contains(expectedFragment));
        }
    }

    @Test
    public void parsesARealEdgekitManifest() throws Exception {
        BundleManifest m = BundleManifest.parse(real());
        assertEquals("tiny_cnn", m.modelName);
        assertEquals("classification", m.task);
        assertEquals(1, m.inputs.size());
        BundleManifest.TensorSpec in = m.inputs.get(0);
        assertEquals("image", in.name);
        assertArrayEquals(new int[] {1, 3, 32, 32}, in.shape);
        assertEquals("float32", in.dtype);
        assertEquals("NCHW", in.layout);
        assertEquals("logits", m.outputs.get(0).name);
        assertArrayEquals(new int[] {1, 10}, m.outputs.get(0).shape);
        assertEquals("image", m.preprocessKind);
        ImagePreprocessor.Params p = m.imagePreprocess;
        assertEquals(36, p.resize);
        assertEquals(32, p.crop);
        assertArrayEquals(new double[] {0.485, 0.456, 0.406}, p.mean, 0);
        assertArrayEquals(new double[] {0.229, 0.224, 0.225}, p.std, 0);
        assertEquals("RGB", p.color);
        assertEquals("NCHW", p.layout);
        assertNull("tiny_cnn has no labels", m.labels);
        assertEquals(m.inputs.get(0), m.requireImageClassifierInput());
    }

    @Test
    public void picksTheTfliteArtifactAndItsSignatureNames() throws Exception {
        BundleManifest m = BundleManifest.parse(real());
        BundleManifest.Artifact a = m.pickTflite(null);
        assertEquals("tflite", a.target);
        assertEquals("fp32", a.precision);
        assertEquals("tiny_cnn-fp32.tflite", a.path);
        assertEquals("serving_default", a.signature);
        assertEquals("args_0", a.runtimeInput("image"));
        assertEquals("output_0", a.runtimeOutput("logits"));
        assertEquals(1, a.files.size());
        assertEquals("tiny_cnn-fp32.tflite", a.files.get(0).path);
        assertEquals(64, a.files.get(0).sha256.length());
        assertTrue(a.files.get(0).sizeBytes > 0);
        assertEquals(Arrays.asList("xnnpack", "nnapi", "gpu"), a.delegates);
        assertNull(a.deprecated);
        assertEquals(a, m.pickTflite("fp32"));
    }

    /** A second tflite artifact, as an INT8 export would add it. */
    static String withInt8() throws Exception {
        String json = real();
        int at = json.indexOf("\"artifacts\": [") + "\"artifacts\": [".length();
        String int8 = "{\"target\": \"tflite\", \"precision\": \"int8\", \"path\": \"tiny_cnn-int8.tflite\","
                + " \"files\": [{\"path\": \"tiny_cnn-int8.tflite\", \"sha256\": \"00\", \"size_bytes\": 9000}],"
                + " \"meta\": {\"signature\": \"serving_default\", \"inputs\": [{\"name\": \"image\", \"runtime_name\": \"args_0\"}],"
                + " \"outputs\": [{\"name\": \"logits\", \"runtime_name\": \"output_0\"}]}, \"delegates\": [\"xnnpack\"], \"deprecated\": null},";
        return json.substring(0, at) + int8 + json.substring(at);
    }

    @Test
    public void prefersInt8WhenPresentUnlessAskedOtherwise() throws Exception {
        BundleManifest m = BundleManifest.parse(withInt8());
        assertEquals(2, m.tfliteArtifacts().size());
        assertEquals("int8", m.pickTflite(null).precision);
        assertEquals("tiny_cnn-int8.tflite", m.pickTflite(null).path);
        assertEquals("fp32", m.pickTflite("fp32").precision);
        try {
            m.pickTflite("fp16");
            fail("fp16 is not in the bundle");
        } catch (ManifestException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("int8, fp32"));
        }
    }

    @Test
    public void bundleWithoutTfliteSaysWhatItHas() throws Exception {
        String json = real().replace("\"target\": \"tflite\"", "\"target\": \"onnx\"");
        BundleManifest m = BundleManifest.parse(json);
        try {
            m.pickTflite(null);
            fail("no tflite artifact");
        } catch (ManifestException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("no TFLite artifact (it has: onnx/fp32)"));
            assertTrue(e.getMessage(), e.getMessage().contains("--targets tflite"));
        }
    }

    @Test
    public void labelsComeFromSpecThenLabelsTxtThenIndex() throws Exception {
        BundleManifest plain = BundleManifest.parse(real());
        assertEquals(Arrays.asList("class 0", "class 1", "class 2"), plain.resolveLabels(null, 3));
        assertEquals(Arrays.asList("cat", "dog", "class 2"), plain.resolveLabels("cat\r\ndog\n", 3));
        BundleManifest named = BundleManifest.parse(real().replace("\"labels\": null", "\"labels\": [\"a\", \"b\\u00e9\"]"));
        assertEquals(Arrays.asList("a", "b\u00e9"), named.labels);
        assertEquals(Arrays.asList("a", "b\u00e9"), named.resolveLabels("ignored\n", 2));
    }

    @Test
    public void rejectsWhatIsNotABundleManifest() throws Exception {
        assertRejected("[1, 2]", "not a JSON object");
        assertRejected("{\"format\": \"something\"}", "not an edgekit bundle manifest");
        assertRejected(real().replace("\"format_version\": 1", "\"format_version\": 2"), "format_version 2");
        assertRejected(real().replace("\"inputs\": [", "\"inputz\": ["), "has no \"inputs\"");
        assertRejected(real().replace("\"resize\": 36", "\"resize\": \"36\""), "preprocess.resize is \"36\", expected an integer");
        assertRejected(real().replace("\"path\": \"tiny_cnn-fp32.tflite\"", "\"path\": \"../../etc/passwd\""),
                "must be relative and stay inside the bundle");
        assertRejected(real().substring(0, 200), "JSON: ");
    }

    @Test
    public void textModelsAreRefusedWithAReason() throws Exception {
        String json = real().replace("\"kind\": \"image\"", "\"kind\": \"text\"");
        BundleManifest m = BundleManifest.parse(json);
        assertEquals("text", m.preprocessKind);
        assertNull(m.imagePreprocess);
        try {
            m.requireImageClassifierInput();
            fail("text preprocessing is not supported by the demo");
        } catch (ManifestException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("has text preprocessing"));
        }
    }

    @Test
    public void shapeMustMatchTheCrop() throws Exception {
        BundleManifest m = BundleManifest.parse(real().replace("\"crop\": 32", "\"crop\": 28"));
        try {
            m.requireImageClassifierInput();
            fail("crop 28 does not fit a 32x32 input");
        } catch (ManifestException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("[1, 3, 28, 28]"));
        }
    }

    @Test
    public void labelsTxtParsing() {
        List<String> l = Labels.parse("tench\ngoldfish\n\n");
        assertEquals(Arrays.asList("tench", "goldfish"), l);
        assertEquals(Arrays.asList("", "x"), Labels.parse("\nx\n"));
        assertEquals(0, Labels.parse("").size());
    }
}
