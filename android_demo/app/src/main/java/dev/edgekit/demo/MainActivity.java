package dev.edgekit.demo;

import android.app.Activity;
import android.content.Intent;
import android.content.res.AssetFileDescriptor;
import android.graphics.Bitmap;
import android.graphics.BitmapFactory;
import android.graphics.Typeface;
import android.net.Uri;
import android.os.Build;
import android.os.Bundle;
import android.os.Handler;
import android.os.Looper;
import android.os.SystemClock;
import android.provider.MediaStore;
import android.view.View;
import android.view.ViewGroup;
import android.widget.AdapterView;
import android.widget.ArrayAdapter;
import android.widget.Button;
import android.widget.ImageView;
import android.widget.LinearLayout;
import android.widget.ScrollView;
import android.widget.Spinner;
import android.widget.TextView;
import dev.edgekit.demo.core.BundleManifest;
import dev.edgekit.demo.core.ImagePreprocessor;
import dev.edgekit.demo.core.ManifestException;
import dev.edgekit.demo.core.TopK;
import java.io.ByteArrayOutputStream;
import java.io.FileInputStream;
import java.io.FileNotFoundException;
import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.Charset;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

/**
 * Loads the edgekit bundle copied into assets/ (manifest.json, labels.txt, the .tflite files),
 * preprocesses an image exactly as edgekit's Python does, runs the TFLite model with the delegate
 * chosen in the UI and shows the top-5 classes and the latency.
 *
 * <p>No AndroidX, no layouts: the UI is built in code so the APK also builds with Debian's tools
 * (build_apk.sh). No lambdas: dx (used there) does not desugar them for minSdk 23.
 */
public class MainActivity extends Activity {
    private static final int REQUEST_PICK = 1;
    private static final int REQUEST_CAMERA = 2;
    private static final int TOP_K = 5;
    private static final int TIMED_RUNS = 10;
    private static final String[] SAMPLE_ASSETS = {"sample.png", "sample.jpg"};

    private final ExecutorService worker = Executors.newSingleThreadExecutor();
    private final Handler ui = new Handler(Looper.getMainLooper());

    private BundleManifest manifest;
    private String labelsTxt;
    private List<BundleManifest.Artifact> tflite = new ArrayList<BundleManifest.Artifact>();

    private Spinner accelSpinner;
    private Spinner precisionSpinner;
    private ImageView preview;
    private TextView info;
    private TextView results;
    private Bitmap current;
    private String lastRun; // artifact + delegate of the last run: spinner callbacks rerun only on a change

    // touched on the worker thread only
    private TfliteRunner runner;
    private String runnerKey;

    @Override
    protected void onCreate(Bundle state) {
        super.onCreate(state);
        buildUi();
        try {
            manifest = BundleManifest.parse(readAsset("manifest.json"));
            manifest.requireImageClassifierInput();
            tflite = manifest.tfliteArtifacts();
            manifest.pickTflite(null); // fails with a clear message when there is none
            labelsTxt = assetExists("labels.txt") ? readAsset("labels.txt") : null;
        } catch (FileNotFoundException e) {
            showError("assets/manifest.json is missing. Copy an edgekit bundle into the app first:\n"
                    + "  edgekit bundle BUNDLE --android android_demo/app/src/main/assets\n"
                    + "or build the APK with android_demo/build_apk.sh BUNDLE OUT.apk");
            return;
        } catch (ManifestException | IOException e) {
            showError("Cannot use this bundle: " + e.getMessage());
            return;
        }
        List<String> precisions = new ArrayList<String>();
        int preferred = 0;
        try {
            BundleManifest.Artifact pick = manifest.pickTflite(null);
            for (int i = 0; i < tflite.size(); i++) {
                precisions.add(tflite.get(i).precision + "  (" + tflite.get(i).path + ")");
                if (tflite.get(i) == pick) {
                    preferred = i;
                }
            }
        } catch (ManifestException e) {
            showError(e.getMessage());
            return;
        }
        precisionSpinner.setAdapter(new ArrayAdapter<String>(this, android.R.layout.simple_spinner_dropdown_item, precisions));
        precisionSpinner.setSelection(preferred);
        describeBundle();
        loadSample();
    }

    // ------------------------------------------------------------------ UI

    private void buildUi() {
        int pad = (int) (12 * getResources().getDisplayMetrics().density);
        LinearLayout col = new LinearLayout(this);
        col.setOrientation(LinearLayout.VERTICAL);
        col.setPadding(pad, pad, pad, pad);

        info = new TextView(this);
        info.setTextSize(13);
        col.addView(info);

        accelSpinner = new Spinner(this);
        accelSpinner.setAdapter(new ArrayAdapter<TfliteRunner.Accel>(this, android.R.layout.simple_spinner_dropdown_item,
                TfliteRunner.Accel.values()));
        precisionSpinner = new Spinner(this);
        AdapterView.OnItemSelectedListener rerun = new AdapterView.OnItemSelectedListener() {
            @Override
            public void onItemSelected(AdapterView<?> parent, View view, int position, long id) {
                if (lastRun == null || lastRun.equals(selectionKey())) {
                    return; // the first layout pass reports the initial selection: not a change
                }
                if (parent == accelSpinner && accelSpinner.getSelectedItem() == TfliteRunner.Accel.NNAPI
                        && Build.VERSION.SDK_INT >= 35) {
                    results.setText("Note: NNAPI is deprecated from Android 15 (API 35); prefer the GPU delegate or a vendor "
                            + "NPU delegate (LiteRT). Running anyway...");
                }
                classifyCurrent();
            }

            @Override
            public void onNothingSelected(AdapterView<?> parent) {}
        };
        col.addView(label("Delegate"));
        col.addView(accelSpinner);
        col.addView(label("Model file (TFLite artifacts in the bundle)"));
        col.addView(precisionSpinner);

        LinearLayout buttons = new LinearLayout(this);
        buttons.setOrientation(LinearLayout.HORIZONTAL);
        buttons.addView(button("Sample image", new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                loadSample();
            }
        }));
        buttons.addView(button("Open image…", new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                Intent pick = new Intent(Intent.ACTION_GET_CONTENT);
                pick.setType("image/*");
                pick.addCategory(Intent.CATEGORY_OPENABLE);
                startActivityForResult(Intent.createChooser(pick, "Open image"), REQUEST_PICK);
            }
        }));
        buttons.addView(button("Camera", new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                Intent cam = new Intent(MediaStore.ACTION_IMAGE_CAPTURE);
                if (cam.resolveActivity(getPackageManager()) == null) {
                    results.setText("No camera app on this device.");
                    return;
                }
                startActivityForResult(cam, REQUEST_CAMERA); // returns a small preview bitmap: fine for a demo
            }
        }));
        col.addView(buttons);

        preview = new ImageView(this);
        preview.setAdjustViewBounds(true);
        preview.setMaxHeight((int) (240 * getResources().getDisplayMetrics().density));
        col.addView(preview);

        results = new TextView(this);
        results.setTypeface(Typeface.MONOSPACE);
        results.setTextSize(13);
        results.setTextIsSelectable(true);
        col.addView(results);

        ScrollView scroll = new ScrollView(this);
        scroll.addView(col, new ViewGroup.LayoutParams(ViewGroup.LayoutParams.MATCH_PARENT, ViewGroup.LayoutParams.WRAP_CONTENT));
        setContentView(scroll);
        accelSpinner.setOnItemSelectedListener(rerun);
        precisionSpinner.setOnItemSelectedListener(rerun);
    }

    private TextView label(String text) {
        TextView t = new TextView(this);
        t.setText(text);
        t.setTypeface(Typeface.DEFAULT_BOLD);
        return t;
    }

    private Button button(String text, View.OnClickListener click) {
        Button b = new Button(this);
        b.setText(text);
        b.setAllCaps(false);
        b.setOnClickListener(click);
        return b;
    }

    private void describeBundle() {
        ImagePreprocessor.Params p = manifest.imagePreprocess;
        BundleManifest.TensorSpec in = manifest.inputs.get(0);
        StringBuilder s = new StringBuilder();
        s.append("Model: ").append(manifest.modelName).append(" (").append(manifest.task).append(")\n");
        s.append("Input: ").append(in.name).append(" ").append(in.dtype).append(java.util.Arrays.toString(in.shape))
                .append(" ").append(p.layout).append("\n");
        s.append("Preprocess: ").append(p).append("\n");
        s.append("Labels: ").append(manifest.labels != null ? "manifest (" + manifest.labels.size() + ")"
                : labelsTxt != null ? "labels.txt" : "none (class index)");
        info.setText(s.toString());
    }

    private void showError(String message) {
        results.setText(message);
        info.setText("edgekit demo: no usable bundle");
    }

    // ------------------------------------------------------------------ images

    private static BitmapFactory.Options decodeOptions() {
        BitmapFactory.Options o = new BitmapFactory.Options();
        o.inPreferredConfig = Bitmap.Config.ARGB_8888;
        o.inPremultiplied = false; // keep the stored RGB under alpha, as PIL's convert("RGB") does
        o.inScaled = false;
        return o;
    }

    private void loadSample() {
        if (manifest == null) {
            return;
        }
        for (String name : SAMPLE_ASSETS) {
            if (!assetExists(name)) {
                continue;
            }
            try (InputStream in = getAssets().open(name)) {
                setImage(BitmapFactory.decodeStream(in, null, decodeOptions()), "assets/" + name);
                return;
            } catch (IOException e) {
                results.setText("Cannot read assets/" + name + ": " + e.getMessage());
                return;
            }
        }
        results.setText("No sample image in assets (" + SAMPLE_ASSETS[0] + "); use Open image or Camera.");
    }

    @Override
    protected void onActivityResult(int requestCode, int resultCode, Intent data) {
        super.onActivityResult(requestCode, resultCode, data);
        if (resultCode != RESULT_OK || data == null || manifest == null) {
            return;
        }
        if (requestCode == REQUEST_PICK && data.getData() != null) {
            Uri uri = data.getData();
            try (InputStream in = getContentResolver().openInputStream(uri)) {
                Bitmap b = BitmapFactory.decodeStream(in, null, decodeOptions());
                if (b == null) {
                    results.setText("Cannot decode " + uri);
                    return;
                }
                setImage(b, uri.getLastPathSegment());
            } catch (IOException | SecurityException e) {
                results.setText("Cannot open " + uri + ": " + e.getMessage());
            }
        } else if (requestCode == REQUEST_CAMERA && data.getExtras() != null) {
            Object thumb = data.getExtras().get("data");
            if (thumb instanceof Bitmap) {
                setImage(((Bitmap) thumb).copy(Bitmap.Config.ARGB_8888, false), "camera preview");
            }
        }
    }

    private void setImage(Bitmap bitmap, String source) {
        if (bitmap == null) {
            results.setText("Cannot decode " + source);
            return;
        }
        current = bitmap;
        preview.setImageBitmap(bitmap);
        preview.setContentDescription(source);
        classifyCurrent();
    }

    // ------------------------------------------------------------------ inference

    private String selectionKey() {
        return precisionSpinner.getSelectedItemPosition() + "|" + accelSpinner.getSelectedItem();
    }

    private void classifyCurrent() {
        if (manifest == null || current == null || tflite.isEmpty()) {
            return;
        }
        lastRun = selectionKey();
        final Bitmap bitmap = current;
        final BundleManifest.Artifact artifact = tflite.get(Math.max(0, precisionSpinner.getSelectedItemPosition()));
        final TfliteRunner.Accel accel = (TfliteRunner.Accel) accelSpinner.getSelectedItem();
        final String note = results.getText().toString().startsWith("Note: NNAPI") ? results.getText() + "\n\n" : "";
        results.setText(note + "Running " + artifact.path + " on " + accel + " ...");
        worker.execute(new Runnable() {
            @Override
            public void run() {
                final String text = classify(bitmap, artifact, accel);
                ui.post(new Runnable() {
                    @Override
                    public void run() {
                        results.setText(note + text);
                    }
                });
            }
        });
    }

    /** Worker thread: preprocess, (re)create the interpreter if needed, run, format. */
    private String classify(Bitmap bitmap, BundleManifest.Artifact artifact, TfliteRunner.Accel accel) {
        try {
            long t0 = SystemClock.elapsedRealtimeNanos();
            int w = bitmap.getWidth(), h = bitmap.getHeight();
            int[] argb = new int[w * h];
            bitmap.getPixels(argb, 0, w, 0, 0, w, h);
            float[] x = ImagePreprocessor.toTensor(argb, w, h, manifest.imagePreprocess);
            double preMs = (SystemClock.elapsedRealtimeNanos() - t0) / 1e6;

            String key = artifact.path + "|" + accel;
            if (runner == null || !key.equals(runnerKey)) {
                closeRunner();
                long l0 = SystemClock.elapsedRealtimeNanos();
                runner = new TfliteRunner(mapAsset(artifact.path), manifest, artifact, accel, 4);
                runnerKey = key;
                double loadMs = (SystemClock.elapsedRealtimeNanos() - l0) / 1e6;
                return format(runner.run(x, TIMED_RUNS), w, h, preMs, loadMs);
            }
            return format(runner.run(x, TIMED_RUNS), w, h, preMs, -1);
        } catch (LinkageError e) {
            // NoClassDefFoundError / UnsatisfiedLinkError: no TFLite runtime in this APK
            return "The TFLite runtime is not in this APK (" + e.getClass().getSimpleName() + ": " + e.getMessage() + ").\n"
                    + "An APK from build_apk.sh is compiled against compile-only stubs and cannot run models; "
                    + "build the app with Gradle / Android Studio, which packages org.tensorflow:tensorflow-lite.";
        } catch (IOException e) {
            return "Cannot load the model: " + e.getMessage();
        } catch (RuntimeException e) {
            closeRunner();
            return "Failed on " + accel + ": " + e.getClass().getSimpleName() + ": " + e.getMessage()
                    + (accel != TfliteRunner.Accel.CPU ? "\nChoose CPU (XNNPACK) to run without a delegate." : "");
        }
    }

    private String format(TfliteRunner.Output out, int w, int h, double preMs, double loadMs) {
        List<String> names = manifest.resolveLabels(labelsTxt, out.scores.length);
        float[] prob = TopK.softmax(out.scores);
        StringBuilder s = new StringBuilder();
        s.append(runner.description).append("\n\n");
        s.append(String.format(Locale.US, "Top-%d of %d (softmax of the outputs):%n", TOP_K, out.scores.length));
        int rank = 1;
        for (int i : TopK.indices(out.scores, TOP_K)) {
            s.append(String.format(Locale.US, "%d. %-28s %6.2f%%  (score %.4f)%n", rank++, names.get(i), 100f * prob[i], out.scores[i]));
        }
        s.append(String.format(Locale.US, "%nImage %dx%d, preprocess %.1f ms%n", w, h, preMs));
        if (loadMs >= 0) {
            s.append(String.format(Locale.US, "Interpreter + delegate setup %.1f ms%n", loadMs));
        }
        s.append(String.format(Locale.US, "First inference %.2f ms; median of %d runs %.2f ms (min %.2f)%n",
                out.firstRunMs, out.runs, out.medianMs, out.minMs));
        return s.toString();
    }

    private void closeRunner() {
        if (runner != null) {
            try {
                runner.close();
            } catch (RuntimeException ignored) {
                // closing a half-initialised delegate must not hide the error being reported
            }
            runner = null;
            runnerKey = null;
        }
    }

    @Override
    protected void onDestroy() {
        worker.execute(new Runnable() {
            @Override
            public void run() {
                closeRunner();
            }
        });
        worker.shutdown();
        super.onDestroy();
    }

    // ------------------------------------------------------------------ assets

    /**
     * Memory-map a model stored uncompressed in the APK (build_apk.sh: aapt2 -0 .tflite;
     * Gradle: androidResources.noCompress). A compressed asset has no file descriptor.
     */
    private ByteBuffer mapAsset(String path) throws IOException {
        AssetFileDescriptor fd;
        try {
            fd = getAssets().openFd(path);
        } catch (FileNotFoundException e) {
            if (assetExists(path)) {
                throw new IOException("assets/" + path + " is compressed in the APK, so it cannot be memory-mapped: "
                        + "add noCompress 'tflite' (Gradle) or aapt2 -0 .tflite");
            }
            throw new IOException("assets/" + path + " is missing: copy the whole bundle into assets/");
        }
        try (FileInputStream in = new FileInputStream(fd.getFileDescriptor())) {
            return in.getChannel().map(FileChannel.MapMode.READ_ONLY, fd.getStartOffset(), fd.getDeclaredLength());
        } finally {
            fd.close();
        }
    }

    private boolean assetExists(String name) {
        try {
            getAssets().open(name).close();
            return true;
        } catch (IOException e) {
            return false;
        }
    }

    private String readAsset(String name) throws IOException {
        try (InputStream in = getAssets().open(name)) {
            ByteArrayOutputStream buf = new ByteArrayOutputStream();
            byte[] chunk = new byte[8192];
            int n;
            while ((n = in.read(chunk)) > 0) {
                buf.write(chunk, 0, n);
            }
            return new String(buf.toByteArray(), Charset.forName("UTF-8"));
        }
    }
}
