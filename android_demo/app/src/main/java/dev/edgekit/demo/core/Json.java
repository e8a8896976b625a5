package dev.edgekit.demo.core;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A small strict JSON (RFC 8259) reader: objects become {@link LinkedHashMap} (key order kept),
 * arrays {@link ArrayList}, strings {@link String}, numbers {@link Long} (integers that fit) or
 * {@link Double}, true/false {@link Boolean}, and null Java null.
 *
 * <p>Plain Java with no android.* import, so the manifest parsing unit-tests on the JVM (org.json is
 * part of Android but not of the JDK). A manifest is a few KB; speed does not matter here.
 */
public final class Json {
    private final String s;
    private int i;

    private Json(String s) {
        this.s = s;
    }

    /** Parse one JSON document; anything but whitespace after it is an error. */
    public static Object parse(String text) throws ManifestException {
        if (text == null) {
            throw new ManifestException("no JSON text (null)");
        }
        Json p = new Json(text);
        if (p.s.length() > 0 && p.s.charAt(0) == '\uFEFF') {
            p.i = 1; // UTF-8 byte order mark
        }
        p.ws();
        Object v = p.value();
        p.ws();
        if (p.i != p.s.length()) {
            throw p.error("unexpected text after the JSON value");
        }
        return v;
    }

    private ManifestException error(String what) {
        int line = 1, col = 1;
        for (int k = 0; k < i && k < s.length(); k++) {
            if (s.charAt(k) == '\n') {
                line++;
                col = 1;
            } else {
                col++;
            }
        }
        return new ManifestException("JSON: " + what + " at line " + line + ", column " + col);
    }

    private void ws() {
        while (i < s.length()) {
            char c = s.charAt(i);
            if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
                i++;
            } else {
                break;
            }
        }
    }

    private Object value() throws ManifestException {
        if (i >= s.length()) {
            throw error("unexpected end of text");
        }
        char c = s.charAt(i);
        switch (c) {
            case '{':
                return object();
            case '[':
                return array();
            case '"':
                return string();
            case 't':
                literal("true");
                return Boolean.TRUE;
            case 'f':
                literal("false");
                return Boolean.FALSE;
            case 'n':
                literal("null");
                return null;
            default:
                if (c == '-' || (c >= '0' && c <= '9')) {
                    return number();
                }
                throw error("unexpected character '" + c + "'");
        }
    }

    private void literal(String word) throws ManifestException {
        if (!s.startsWith(word, i)) {
            throw error("expected " + word);
        }
        i += word.length();
    }

    private Map<String, Object> object() throws ManifestException {
        Map<String, Object> out = new LinkedHashMap<String, Object>();
        i++; // {
        ws();
        if (i < s.length() && s.charAt(i) == '}') {
            i++;
            return out;
        }
        while (true) {
            ws();
            if (i >= s.length() || s.charAt(i) != '"') {
                throw error("expected a string key");
            }
            String key = string();
            ws();
            expect(':');
            ws();
            out.put(key, value());
            ws();
            if (i < s.length() && s.charAt(i) == ',') {
                i++;
                continue;
            }
            expect('}');
            return out;
        }
    }

    private List<Object> array() throws ManifestException {
        List<Object> out = new ArrayList<Object>();
        i++; // [
        ws();
        if (i < s.length() && s.charAt(i) == ']') {
            i++;
            return out;
        }
        while (true) {
            ws();
            out.add(value());
            ws();
            if (i < s.length() && s.charAt(i) == ',') {
                i++;
                continue;
            }
            expect(']');
            return out;
        }
    }

    private void expect(char c) throws ManifestException {
        if (i >= s.length() || s.charAt(i) != c) {
            throw error("expected '" + c + "'");
        }
        i++;
    }

    private String string() throws ManifestException {
        i++; // opening quote
        StringBuilder b = new StringBuilder();
        while (true) {
            if (i >= s.length()) {
                throw error("unterminated string");
            }
            char c = s.charAt(i++);
            if (c == '"') {
                return b.toString();
            }
            if (c < 0x20) {
                i--;
                throw error("control character in a string");
            }
            if (c != '\\') {
                b.append(c);
                continue;
            }
            if (i >= s.length()) {
                throw error("unterminated escape");
            }
            char e = s.charAt(i++);
            switch (e) {
                case '"': b.append('"'); break;
                case '\\': b.append('\\'); break;
                case '/': b.append('/'); break;
                case 'b': b.append('\b'); break;
                case 'f': b.append('\f'); break;
                case 'n': b.append('\n'); break;
                case 'r': b.append('\r'); break;
                case 't': b.append('\t'); break;
                case 'u':
                    if (i + 4 > s.length()) {
                        throw error("short \\u escape");
                    }
                    int cp = 0;
                    for (int k = 0; k < 4; k++) {
                        int d = Character.digit(s.charAt(i + k), 16);
                        if (d < 0) {
                            throw error("bad \\u escape");
                        }
                        cp = cp * 16 + d;
                    }
                    i += 4;
                    b.append((char) cp); // surrogate pairs arrive as two escapes, in order
                    break;
                default:
                    i--;
                    throw error("bad escape \\" + e);
            }
        }
    }

    private Object number() throws ManifestException {
        int start = i;
        boolean integral = true;
        if (s.charAt(i) == '-') {
            i++;
        }
        if (i >= s.length()) {
            throw error("bad number");
        }
        if (s.charAt(i) == '0') {
            i++;
        } else if (s.charAt(i) >= '1' && s.charAt(i) <= '9') {
            while (i < s.length() && Character.isDigit(s.charAt(i))) {
                i++;
            }
        } else {
            throw error("bad number");
        }
        if (i < s.length() && s.charAt(i) == '.') {
            integral = false;
            i++;
            int d = i;
            while (i < s.length() && s.charAt(i) >= '0' && s.charAt(i) <= '9') {
                i++;
            }
            if (i == d) {
                throw error("bad number: no digit after '.'");
            }
        }
        if (i < s.length() && (s.charAt(i) == 'e' || s.charAt(i) == 'E')) {
            integral = false;
            i++;
            if (i < s.length() && (s.charAt(i) == '+' || s.charAt(i) == '-')) {
                i++;
            }
            int d = i;
            while (i < s.length() && s.charAt(i) >= '0' && s.charAt(i) <= '9') {
                i++;
            }
            if (i == d) {
                throw error("bad number: no digit in the exponent");
            }
        }
        String text = s.substring(start, i);
        if (integral) {
            try {
                return Long.valueOf(Long.parseLong(text));
            } catch (NumberFormatException tooBig) {
                return Double.valueOf(Double.parseDouble(text));
            }
        }
        return Double.valueOf(Double.parseDouble(text));
    }
}
