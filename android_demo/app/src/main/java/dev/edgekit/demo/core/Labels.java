package dev.edgekit.demo.core;

import java.util.ArrayList;
import java.util.List;

/** Class names: labels.txt parsing (one per line, as edgekit writes it) and padding to n classes. */
public final class Labels {
    private Labels() {}

    /** One label per line; "\r\n" tolerated; a final empty line (the trailing newline) is dropped. */
    public static List<String> parse(String text) {
        List<String> out = new ArrayList<String>();
        if (text == null) {
            return out;
        }
        String[] lines = text.split("\n", -1);
        int n = lines.length;
        while (n > 0 && lines[n - 1].trim().isEmpty()) {
            n--;
        }
        for (int k = 0; k < n; k++) {
            String s = lines[k];
            if (s.endsWith("\r")) {
                s = s.substring(0, s.length() - 1);
            }
            out.add(s);
        }
        return out;
    }

    /** Exactly n names: missing ones (no labels, or fewer than classes) become "class k". */
    public static List<String> padded(List<String> labels, int n) {
        List<String> out = new ArrayList<String>(n);
        for (int k = 0; k < n; k++) {
            out.add(labels != null && k < labels.size() ? labels.get(k) : "class " + k);
        }
        return out;
    }
}
