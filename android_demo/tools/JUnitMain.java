import java.util.ArrayList;
import java.util.List;
import org.junit.runner.Description;
import org.junit.runner.JUnitCore;
import org.junit.runner.Result;
import org.junit.runner.notification.Failure;
import org.junit.runner.notification.RunListener;

/**
 * Runs JUnit 4 test classes (names as arguments) and prints one line per test and the plain
 * closing line "N passed, N failed[, N skipped]". Exit status 1 when any test failed. Used by
 * run_jvm_tests.sh (plain javac/java, no Gradle); Android Studio runs the same tests with Gradle.
 */
public final class JUnitMain {
    public static void main(String[] args) throws Exception {
        List<Class<?>> classes = new ArrayList<Class<?>>();
        for (String name : args) {
            classes.add(Class.forName(name));
        }
        JUnitCore core = new JUnitCore();
        final List<Description> failed = new ArrayList<Description>();
        core.addListener(new RunListener() {
            @Override
            public void testFailure(Failure f) {
                failed.add(f.getDescription());
                System.out.println("FAIL " + name(f.getDescription()) + ": " + f.getMessage());
                String trace = f.getTrace();
                String[] lines = trace.split("\n");
                for (int i = 0; i < Math.min(lines.length, 8); i++) {
                    System.out.println("    " + lines[i]);
                }
            }

            @Override
            public void testAssumptionFailure(Failure f) {
                System.out.println("SKIP " + name(f.getDescription()) + ": " + f.getMessage());
            }

            @Override
            public void testIgnored(Description d) {
                System.out.println("SKIP " + name(d));
            }

            @Override
            public void testFinished(Description d) {
                if (!failed.contains(d)) {
                    System.out.println("ok   " + name(d));
                }
            }
        });
        Result r = core.run(classes.toArray(new Class<?>[0]));
        int skipped = r.getIgnoreCount() + r.getAssumptionFailureCount();
        int failures = r.getFailureCount();
        int passed = r.getRunCount() - failures - r.getAssumptionFailureCount();
        System.out.println(String.format("JVM tests: %d passed, %d failed, %d skipped (%.1f s)", passed, failures, skipped,
                r.getRunTime() / 1000.0));
        System.out.println(passed + " passed, " + failures + " failed" + (skipped > 0 ? ", " + skipped + " skipped" : ""));
        System.exit(failures == 0 && r.getRunCount() > 0 ? 0 : 1);
    }

    private static String name(Description d) {
        String c = d.getClassName();
        return c.substring(c.lastIndexOf('.') + 1) + "." + d.getMethodName();
    }
}
