package dev.edgekit.demo.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.awt.image.BufferedImage;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.List;
import java.util.Map;
import javax.imageio.ImageIO;
import org.junit.Test;

/**
 * The shared test vectors: each PNG in testdata, preprocessed by edgekit's Python
 * preprocess_image (make_test_vector.py), must come out of ImagePreprocessor the same.
 * The resized+cropped uint8 pixels must match exactly; the float tensor within 1e-4 (it is
 * expected to be bit-identical: the same bytes go through the same float32 operations).
 */
public class PreprocessVectorTest {
    static final double TOLERANCE = 1e-4;

    @SuppressWarnings("unchecked")
    static List<Object> cases() throws Exception {
        Map<String, Object> index = (Map<String, Object>) Json.parse(TestData.text("vectors.json"));
        List<Object> cases = (List<Object>) index.get("cases");
        assertTrue("vectors.json lists no case", cases != null && !cases.isEmpty());
        return cases;
    }

    /** The PNG as ARGB ints, the form Android's Bitmap.getPixels gives. */
    static int[] argb(BufferedImage img) {
        return img.getRGB(0, 0, img.getWidth(), img.getHeight(), null, 0, img.getWidth());
    }

    static BufferedImage png(String name, String sha256) throws IOException {
        byte[] bytes = TestData.bytes(name);
        assertEquals(name + " changed since make_test_vector.py ran (sha256)", sha256, hex(bytes));
        BufferedImage img = ImageIO.read(new java.io.ByteArrayInputStream(bytes));
        if (img == null) {
            fail("ImageIO cannot decode " + name);
        }
        return img;
    }

    static ImagePreprocessor.Params params(Map<String, Object> c, String layout) {
        return new ImagePreprocessor.Params(((Number) c.get("resize")).intValue(), ((Number) c.get("crop")).intValue(),
                doubles(c.get("mean")), doubles(c.get("std")), "RGB", layout);
    }

    @SuppressWarnings("unchecked")
    static double[] doubles(Object o) {
        List<Object> l = (List<Object>) o;
        double[] d = new double[l.size()];
        for (int i = 0; i < d.length; i++) {
            d[i] = ((Number) l.get(i)).doubleValue();
        }
        return d;
    }

    static float[] floats(byte[] le) {
        ByteBuffer b = ByteBuffer.wrap(le).order(ByteOrder.LITTLE_ENDIAN);
        float[] out = new float[le.length / 4];
        b.asFloatBuffer().get(out);
        return out;
    }

    static String hex(byte[] data) {
        try {
            byte[] d = MessageDigest.getInstance("SHA-256").digest(data);
            StringBuilder s = new StringBuilder();
            for (byte x : d) {
                s.append(String.format("%02x", x));
            }
            return s.toString();
        } catch (NoSuchAlgorithmException e) {
            throw new AssertionError(e);
        }
    }

    @Test
    @SuppressWarnings("unchecked")
    public void resizedPixelsMatchPillowExactly() throws Exception {
        for (Object o : cases()) {
            Map<String, Object> c = (Map<String, Object>) o;
            BufferedImage img = png((String) c.get("image"), (String) c.get("image_sha256"));
            int[] got = ImagePreprocessor.cropPixels(argb(img), img.getWidth(), img.getHeight(), params(c, "NCHW"));
            byte[] want = TestData.bytes((String) c.get("pixels"));
            assertEquals(c.get("id") + ": pixel count", want.length, got.length);
            int diffs = 0, maxDiff = 0;
            for (int i = 0; i < want.length; i++) {
                int d = Math.abs((want[i] & 0xFF) - got[i]);
                if (d != 0) {
                    diffs++;
                    maxDiff = Math.max(maxDiff, d);
                }
            }
            assertEquals(c.get("id") + ": " + diffs + " of " + want.length + " uint8 values differ from Pillow (max "
                    + maxDiff + ")", 0, diffs);
        }
    }

    @Test
    @SuppressWarnings("unchecked")
    public void tensorMatchesEdgekitPython() throws Exception {
        StringBuilder report = new StringBuilder();
        for (Object o : cases()) {
            Map<String, Object> c = (Map<String, Object>) o;
            BufferedImage img = png((String) c.get("image"), (String) c.get("image_sha256"));
            float[] got = ImagePreprocessor.toTensor(argb(img), img.getWidth(), img.getHeight(), params(c, "NCHW"));
            byte[] raw = TestData.bytes((String) c.get("tensor"));
            assertEquals(c.get("id") + ": tensor file sha256", c.get("tensor_sha256"), hex(raw));
            float[] want = floats(raw);
            assertEquals(c.get("id") + ": element count", want.length, got.length);
            double max = 0;
            int bitDiffs = 0;
            for (int i = 0; i < want.length; i++) {
                max = Math.max(max, Math.abs((double) want[i] - got[i]));
                if (Float.floatToIntBits(want[i]) != Float.floatToIntBits(got[i])) {
                    bitDiffs++;
                }
            }
            report.append(String.format("  %s: %d values, max |diff| %.3g, %d not bit-identical%n", c.get("id"), want.length, max, bitDiffs));
            assertTrue(c.get("id") + ": max |diff| " + max + " > " + TOLERANCE, max <= TOLERANCE);
        }
        System.out.print("preprocessing vs edgekit Python:\n" + report);
    }

    @Test
    @SuppressWarnings("unchecked")
    public void nhwcLayoutIsTheTransposeOfNchw() throws Exception {
        Map<String, Object> c = (Map<String, Object>) cases().get(0);
        BufferedImage img = png((String) c.get("image"), (String) c.get("image_sha256"));
        float[] chw = ImagePreprocessor.toTensor(argb(img), img.getWidth(), img.getHeight(), params(c, "NCHW"));
        float[] hwc = ImagePreprocessor.toTensor(argb(img), img.getWidth(), img.getHeight(), params(c, "NHWC"));
        int n = ((Number) c.get("crop")).intValue();
        for (int ch = 0; ch < 3; ch++) {
            for (int y = 0; y < n; y++) {
                for (int x = 0; x < n; x++) {
                    assertEquals(chw[ch * n * n + y * n + x], hwc[(y * n + x) * 3 + ch], 0f);
                }
            }
        }
    }

    @Test
    public void resizedSizeUsesPythonRounding() {
        ImagePreprocessor.Params p = new ImagePreprocessor.Params(36, 32, new double[3], new double[] {1, 1, 1}, "RGB", "NCHW");
        // 97x73: scale 36/73, 97 * 36/73 = 47.84 -> 48
        assertArrayEquals(new int[] {48, 36}, ImagePreprocessor.resizedSize(97, 73, p));
        // ties go to even, as Python's round(): 5 * (3/2) = 7.5 -> 8, 7 * 1.5 = 10.5 -> 10
        ImagePreprocessor.Params q = new ImagePreprocessor.Params(3, 1, new double[3], new double[] {1, 1, 1}, "RGB", "NCHW");
        assertArrayEquals(new int[] {8, 3}, ImagePreprocessor.resizedSize(5, 2, q));
        assertArrayEquals(new int[] {10, 3}, ImagePreprocessor.resizedSize(7, 2, q));
        // never below the crop
        ImagePreprocessor.Params r = new ImagePreprocessor.Params(10, 12, new double[3], new double[] {1, 1, 1}, "RGB", "NCHW");
        assertArrayEquals(new int[] {20, 12}, ImagePreprocessor.resizedSize(20, 10, r));
    }

    @Test
    public void downscaleIsAntialiasedNotNaiveBilinear() {
        // A 1-pixel checkerboard downscaled 4x: Pillow's widened triangle filter averages it to
        // mid-grey; a naive 2x2 bilinear sample would return pure black or white.
        int w = 16, h = 16;
        int[][] planes = new int[1][w * h];
        for (int y = 0; y < h; y++) {
            for (int x = 0; x < w; x++) {
                planes[0][y * w + x] = ((x + y) & 1) == 0 ? 255 : 0;
            }
        }
        int[][] out = PilResize.resize(planes, w, h, 4, 4);
        for (int v : out[0]) {
            assertTrue("expected about 128, got " + v, Math.abs(v - 128) <= 16);
        }
    }

    @Test
    public void sameSizeIsACopy() {
        int[][] planes = {{1, 2, 3, 4, 5, 6}};
        int[][] out = PilResize.resize(planes, 3, 2, 3, 2);
        assertArrayEquals(planes[0], out[0]);
        out[0][0] = 99;
        assertEquals(1, planes[0][0]);
    }
}
