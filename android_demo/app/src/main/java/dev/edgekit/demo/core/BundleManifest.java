package dev.edgekit.demo.core;

import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The parts of an edgekit bundle's manifest.json that an app needs: the model's ModelSpec
 * (inputs, outputs, preprocessing, labels) and the artifacts (file, precision, signature names).
 *
 * <p>Format (edgekit/pipeline.py, export_bundle): {"format": "edgekit-bundle", "format_version": 1,
 * "model": {"name", "spec": {"inputs": [{name, shape, dtype, layout}], "outputs": [...],
 * "preprocess": {"kind": "image", resize, crop, mean, std, color} | {"kind": "text", ...} | null,
 * "task", "labels"}}, "artifacts": [{"target", "precision", "path", "files": [{path, sha256,
 * size_bytes}], "meta": {...}, "delegates", "deprecated"}]}. For TFLite, meta holds the
 * signature key and, per spec input/output, its name in that signature ("runtime_name").
 */
public final class BundleManifest {
    public static final String FORMAT = "edgekit-bundle";
    public static final int FORMAT_VERSION = 1;
    public static final String TFLITE = "tflite";

    /** One named tensor of the ModelSpec. */
    public static final class TensorSpec {
        public final String name;
        public final int[] shape;
        public final String dtype;
        public final String layout; // "NCHW", "NHWC" or null

        TensorSpec(String name, int[] shape, String dtype, String layout) {
            this.name = name;
            this.shape = shape;
            this.dtype = dtype;
            this.layout = layout;
        }

        public int numElements() {
            int n = 1;
            for (int d : shape) {
                n *= d;
            }
            return n;
        }
    }

    /** One file of an artifact, with the digest the exporter recorded. */
    public static final class FileEntry {
        public final String path;
        public final String sha256;
        public final long sizeBytes;

        FileEntry(String path, String sha256, long sizeBytes) {
            this.path = path;
            this.sha256 = sha256;
            this.sizeBytes = sizeBytes;
        }
    }

    /** One exported model file (or file set) of the bundle. */
    public static final class Artifact {
        public final String target;
        public final String precision;
        public final String path;
        public final List<FileEntry> files;
        public final List<String> delegates;
        public final String deprecated;
        /** TFLite: the signature key (litert-torch writes "serving_default"); null for other targets. */
        public final String signature;
        /** Spec input/output name -> tensor name inside the signature (TFLite), in spec order. */
        public final Map<String, String> inputRuntimeNames;
        public final Map<String, String> outputRuntimeNames;

        Artifact(String target, String precision, String path, List<FileEntry> files, List<String> delegates,
                 String deprecated, String signature, Map<String, String> in, Map<String, String> out) {
            this.target = target;
            this.precision = precision;
            this.path = path;
            this.files = Collections.unmodifiableList(files);
            this.delegates = Collections.unmodifiableList(delegates);
            this.deprecated = deprecated;
            this.signature = signature;
            this.inputRuntimeNames = Collections.unmodifiableMap(in);
            this.outputRuntimeNames = Collections.unmodifiableMap(out);
        }

        /** The signature tensor name of a spec input, falling back to the spec name itself. */
        public String runtimeInput(String specName) {
            String n = inputRuntimeNames.get(specName);
            return n != null ? n : specName;
        }

        public String runtimeOutput(String specName) {
            String n = outputRuntimeNames.get(specName);
            return n != null ? n : specName;
        }

        @Override
        public String toString() {
            return target + " " + precision + " (" + path + ")";
        }
    }

    public final String modelName;
    public final String task;
    public final List<TensorSpec> inputs;
    public final List<TensorSpec> outputs;
    /** "image", "text", or null when the bundle has no preprocessing. */
    public final String preprocessKind;
    /** Non-null when preprocessKind is "image". */
    public final ImagePreprocessor.Params imagePreprocess;
    /** Class names from the spec, or null (then labels.txt, then "class k"). */
    public final List<String> labels;
    public final List<Artifact> artifacts;

    private BundleManifest(String modelName, String task, List<TensorSpec> inputs, List<TensorSpec> outputs,
                           String preprocessKind, ImagePreprocessor.Params imagePreprocess, List<String> labels,
                           List<Artifact> artifacts) {
        this.modelName = modelName;
        this.task = task;
        this.inputs = Collections.unmodifiableList(inputs);
        this.outputs = Collections.unmodifiableList(outputs);
        this.preprocessKind = preprocessKind;
        this.imagePreprocess = imagePreprocess;
        this.labels = labels == null ? null : Collections.unmodifiableList(labels);
        this.artifacts = Collections.unmodifiableList(artifacts);
    }

    // ---------------------------------------------------------------- parsing

    public static BundleManifest parse(String jsonText) throws ManifestException {
        Object root = Json.parse(jsonText);
        if (!(root instanceof Map)) {
            throw new ManifestException("manifest.json is not a JSON object");
        }
        Map<String, Object> m = asMap(root, "manifest");
        Object format = m.get("format");
        if (!FORMAT.equals(format)) {
            throw new ManifestException("manifest.json is not an edgekit bundle manifest (format is "
                    + describe(format) + ", expected \"" + FORMAT + "\"); copy a folder written by `edgekit export`");
        }
        long version = asLong(m.get("format_version"), "format_version");
        if (version != FORMAT_VERSION) {
            throw new ManifestException("manifest.json has format_version " + version + "; this app reads version "
                    + FORMAT_VERSION + ": rebuild the app with a matching edgekit, or re-export the bundle");
        }
        Map<String, Object> model = asMap(req(m, "model", "manifest"), "model");
        Map<String, Object> spec = asMap(req(model, "spec", "model"), "model.spec");
        String name = asString(model.containsKey("name") ? model.get("name") : spec.get("name"), "model.name");
        String task = spec.get("task") == null ? "classification" : asString(spec.get("task"), "model.spec.task");
        List<TensorSpec> inputs = tensors(asList(req(spec, "inputs", "model.spec"), "model.spec.inputs"), "inputs");
        List<TensorSpec> outputs = tensors(asList(req(spec, "outputs", "model.spec"), "model.spec.outputs"), "outputs");
        if (inputs.isEmpty() || outputs.isEmpty()) {
            throw new ManifestException("model.spec must list at least one input and one output");
        }

        String kind = null;
        ImagePreprocessor.Params image = null;
        Object pre = spec.get("preprocess");
        if (pre != null) {
            Map<String, Object> p = asMap(pre, "model.spec.preprocess");
            kind = asString(req(p, "kind", "model.spec.preprocess"), "model.spec.preprocess.kind");
            if ("image".equals(kind)) {
                image = new ImagePreprocessor.Params(
                        (int) asLong(req(p, "resize", "preprocess"), "preprocess.resize"),
                        (int) asLong(req(p, "crop", "preprocess"), "preprocess.crop"),
                        doubles(req(p, "mean", "preprocess"), "preprocess.mean"),
                        doubles(req(p, "std", "preprocess"), "preprocess.std"),
                        p.get("color") == null ? "RGB" : asString(p.get("color"), "preprocess.color"),
                        layoutOf(inputs.get(0)));
            }
        }

        List<String> labels = null;
        Object lab = spec.get("labels");
        if (lab != null) {
            labels = new ArrayList<String>();
            for (Object o : asList(lab, "model.spec.labels")) {
                labels.add(asString(o, "model.spec.labels[]"));
            }
        }

        List<Artifact> artifacts = new ArrayList<Artifact>();
        Object arts = m.get("artifacts");
        if (arts != null) {
            int k = 0;
            for (Object o : asList(arts, "artifacts")) {
                artifacts.add(artifact(asMap(o, "artifacts[" + k + "]"), k));
                k++;
            }
        }
        return new BundleManifest(name, task, inputs, outputs, kind, image, labels, artifacts);
    }

    private static String layoutOf(TensorSpec t) {
        return t.layout == null ? "NCHW" : t.layout;
    }

    private static Artifact artifact(Map<String, Object> a, int k) throws ManifestException {
        String where = "artifacts[" + k + "]";
        String target = asString(req(a, "target", where), where + ".target");
        String precision = asString(req(a, "precision", where), where + ".precision");
        String path = asString(req(a, "path", where), where + ".path");
        checkRelative(path, where + ".path");
        List<FileEntry> files = new ArrayList<FileEntry>();
        Object fs = a.get("files");
        if (fs != null) {
            for (Object o : asList(fs, where + ".files")) {
                if (o instanceof String) { // Artifact.to_dict() form: plain paths
                    checkRelative((String) o, where + ".files[]");
                    files.add(new FileEntry((String) o, null, -1));
                    continue;
                }
                Map<String, Object> f = asMap(o, where + ".files[]");
                String fp = asString(req(f, "path", where + ".files[]"), where + ".files[].path");
                checkRelative(fp, where + ".files[].path");
                String sha = f.get("sha256") == null ? null : asString(f.get("sha256"), where + ".files[].sha256");
                long size = f.get("size_bytes") == null ? -1 : asLong(f.get("size_bytes"), where + ".files[].size_bytes");
                files.add(new FileEntry(fp, sha, size));
            }
        }
        List<String> delegates = new ArrayList<String>();
        if (a.get("delegates") != null) {
            for (Object o : asList(a.get("delegates"), where + ".delegates")) {
                delegates.add(asString(o, where + ".delegates[]"));
            }
        }
        String deprecated = a.get("deprecated") == null ? null : asString(a.get("deprecated"), where + ".deprecated");
        String signature = null;
        Map<String, String> in = new LinkedHashMap<String, String>();
        Map<String, String> out = new LinkedHashMap<String, String>();
        Object metaObj = a.get("meta");
        if (metaObj != null) {
            Map<String, Object> meta = asMap(metaObj, where + ".meta");
            if (meta.get("signature") != null) {
                signature = asString(meta.get("signature"), where + ".meta.signature");
            }
            runtimeNames(meta.get("inputs"), in, where + ".meta.inputs");
            runtimeNames(meta.get("outputs"), out, where + ".meta.outputs");
        }
        return new Artifact(target, precision, path, files, delegates, deprecated, signature, in, out);
    }

    private static void runtimeNames(Object list, Map<String, String> into, String where) throws ManifestException {
        if (list == null) {
            return;
        }
        for (Object o : asList(list, where)) {
            Map<String, Object> t = asMap(o, where + "[]");
            if (t.get("name") != null && t.get("runtime_name") != null) {
                into.put(asString(t.get("name"), where + "[].name"), asString(t.get("runtime_name"), where + "[].runtime_name"));
            }
        }
    }

    /** Bundle paths are relative and stay inside the bundle (they become asset names). */
    private static void checkRelative(String path, String where) throws ManifestException {
        if (path.isEmpty() || path.startsWith("/") || path.contains("\\") || path.equals("..")
                || path.startsWith("../") || path.contains("/../") || path.endsWith("/..")) {
            throw new ManifestException(where + " is \"" + path + "\": bundle paths must be relative and stay inside the bundle");
        }
    }

    private static List<TensorSpec> tensors(List<Object> list, String where) throws ManifestException {
        List<TensorSpec> out = new ArrayList<TensorSpec>();
        int k = 0;
        for (Object o : list) {
            String w = "model.spec." + where + "[" + k++ + "]";
            Map<String, Object> t = asMap(o, w);
            List<Object> dims = asList(req(t, "shape", w), w + ".shape");
            int[] shape = new int[dims.size()];
            for (int d = 0; d < shape.length; d++) {
                shape[d] = (int) asLong(dims.get(d), w + ".shape[" + d + "]");
            }
            String layout = t.get("layout") == null ? null : asString(t.get("layout"), w + ".layout");
            String dtype = t.get("dtype") == null ? "float32" : asString(t.get("dtype"), w + ".dtype");
            out.add(new TensorSpec(asString(req(t, "name", w), w + ".name"), shape, dtype, layout));
        }
        return out;
    }

    // ---------------------------------------------------------------- queries

    /** The TFLite artifacts, in manifest order. */
    public List<Artifact> tfliteArtifacts() {
        List<Artifact> out = new ArrayList<Artifact>();
        for (Artifact a : artifacts) {
            if (TFLITE.equals(a.target)) {
                out.add(a);
            }
        }
        return out;
    }

    /**
     * The TFLite artifact to run: the one of {@code precision} when given, else int8 when the
     * bundle has one (smaller, faster on CPU/NPU), else fp32, else the first TFLite artifact.
     */
    public Artifact pickTflite(String precision) throws ManifestException {
        List<Artifact> tfl = tfliteArtifacts();
        if (tfl.isEmpty()) {
            List<String> targets = new ArrayList<String>();
            for (Artifact a : artifacts) {
                targets.add(a.target + "/" + a.precision);
            }
            throw new ManifestException("the bundle has no TFLite artifact (it has: "
                    + (targets.isEmpty() ? "none" : join(targets)) + "); export it with `edgekit export MODEL --targets tflite`");
        }
        if (precision != null) {
            for (Artifact a : tfl) {
                if (precision.equals(a.precision)) {
                    return a;
                }
            }
            throw new ManifestException("the bundle has no " + precision + " TFLite artifact (it has: " + join(precisions(tfl)) + ")");
        }
        for (String want : new String[] {"int8", "fp32"}) {
            for (Artifact a : tfl) {
                if (want.equals(a.precision)) {
                    return a;
                }
            }
        }
        return tfl.get(0);
    }

    private static List<String> precisions(List<Artifact> arts) {
        List<String> out = new ArrayList<String>();
        for (Artifact a : arts) {
            out.add(a.precision);
        }
        return out;
    }

    /**
     * Check that this demo can feed the model: one image input whose shape matches the
     * preprocessing's crop and layout. Returns that input.
     */
    public TensorSpec requireImageClassifierInput() throws ManifestException {
        if (!"image".equals(preprocessKind) || imagePreprocess == null) {
            throw new ManifestException("model " + modelName + " has " + (preprocessKind == null ? "no" : preprocessKind)
                    + " preprocessing; this demo feeds images only (a text model needs the bundle's tokenizer, see README)");
        }
        if (inputs.size() != 1) {
            throw new ManifestException("model " + modelName + " takes " + inputs.size() + " inputs; this demo feeds one image");
        }
        TensorSpec t = inputs.get(0);
        if (!"RGB".equals(imagePreprocess.color)) {
            throw new ManifestException("preprocess.color is " + imagePreprocess.color + "; this demo converts to RGB only");
        }
        if (imagePreprocess.mean.length != 3 || imagePreprocess.std.length != 3) {
            throw new ManifestException("preprocess mean/std must have 3 values (RGB)");
        }
        int c = imagePreprocess.crop;
        int[] want = "NHWC".equals(imagePreprocess.layout) ? new int[] {1, c, c, 3} : new int[] {1, 3, c, c};
        if (!java.util.Arrays.equals(t.shape, want)) {
            throw new ManifestException("input " + t.name + " has shape " + java.util.Arrays.toString(t.shape) + " but the "
                    + imagePreprocess.layout + " preprocessing makes " + java.util.Arrays.toString(want));
        }
        if (!"float32".equals(t.dtype)) {
            throw new ManifestException("input " + t.name + " is " + t.dtype + " in the spec; the image pipeline makes float32");
        }
        return t;
    }

    /** Labels for n classes: the spec's, else {@code labelsTxt} (labels.txt), else "class k". */
    public List<String> resolveLabels(String labelsTxt, int n) {
        List<String> src = labels;
        if (src == null && labelsTxt != null) {
            src = Labels.parse(labelsTxt);
        }
        return Labels.padded(src, n);
    }

    // ---------------------------------------------------------------- typed access

    private static Object req(Map<String, Object> m, String key, String where) throws ManifestException {
        if (!m.containsKey(key) || m.get(key) == null) {
            throw new ManifestException(where + " has no \"" + key + "\"");
        }
        return m.get(key);
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> asMap(Object o, String what) throws ManifestException {
        if (!(o instanceof Map)) {
            throw new ManifestException(what + " is " + describe(o) + ", expected an object");
        }
        return (Map<String, Object>) o;
    }

    @SuppressWarnings("unchecked")
    private static List<Object> asList(Object o, String what) throws ManifestException {
        if (!(o instanceof List)) {
            throw new ManifestException(what + " is " + describe(o) + ", expected an array");
        }
        return (List<Object>) o;
    }

    private static String asString(Object o, String what) throws ManifestException {
        if (!(o instanceof String)) {
            throw new ManifestException(what + " is " + describe(o) + ", expected a string");
        }
        return (String) o;
    }

    private static long asLong(Object o, String what) throws ManifestException {
        if (o instanceof Long) {
            return (Long) o;
        }
        if (o instanceof Double && ((Double) o) == Math.rint((Double) o) && !((Double) o).isInfinite()) {
            return (long) (double) (Double) o;
        }
        throw new ManifestException(what + " is " + describe(o) + ", expected an integer");
    }

    private static double[] doubles(Object o, String what) throws ManifestException {
        List<Object> l = asList(o, what);
        double[] out = new double[l.size()];
        for (int k = 0; k < out.length; k++) {
            Object v = l.get(k);
            if (!(v instanceof Number)) {
                throw new ManifestException(what + "[" + k + "] is " + describe(v) + ", expected a number");
            }
            out[k] = ((Number) v).doubleValue();
        }
        return out;
    }

    private static String describe(Object o) {
        if (o == null) {
            return "null";
        }
        if (o instanceof String) {
            return "\"" + o + "\"";
        }
        if (o instanceof Map) {
            return "an object";
        }
        if (o instanceof List) {
            return "an array";
        }
        return String.valueOf(o);
    }

    static String join(List<String> parts) {
        StringBuilder b = new StringBuilder();
        for (String p : parts) {
            if (b.length() > 0) {
                b.append(", ");
            }
            b.append(p);
        }
        return b.toString();
    }
}
