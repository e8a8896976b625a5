package dev.edgekit.demo.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.util.Arrays;
import java.util.List;
import java.util.Map;
import org.junit.Test;

public class JsonTest {

    static void assertBad(String text, String fragment) {
        try {
            Json.parse(text);
            fail("parsed invalid JSON: " + text);
        } catch (ManifestException e) {
            assertTrue("\"" + e.getMessage() + "\" lacks \"" + fragment + "\"", e.getMessage().contains(fragment));
        }
    }

    @Test
    @SuppressWarnings("unchecked")
    public void parsesValuesOfEveryKind() throws Exception {
        Map<String, Object> m = (Map<String, Object>) Json.parse(
                "\uFEFF { \"a\": 1, \"b\": -2.5e-3, \"c\": [true, false, null], \"d\": {\"e\": \"x\\\"y\\\\z\\n\\u00e9\\ud83d\\ude00\"},"
                        + " \"big\": 12345678901234567890, \"z\": 0, \"f\": 1E2 }");
        assertEquals(Long.valueOf(1), m.get("a"));
        assertEquals(-2.5e-3, (Double) m.get("b"), 0);
        assertEquals(Arrays.asList(true, false, null), m.get("c"));
        assertEquals("x\"y\\z\n\u00e9\ud83d\ude00", ((Map<String, Object>) m.get("d")).get("e"));
        assertEquals(1.2345678901234567e19, (Double) m.get("big"), 1e5);
        assertEquals(Long.valueOf(0), m.get("z"));
        assertEquals(100.0, (Double) m.get("f"), 0);
        assertEquals(Arrays.asList("a", "b", "c", "d", "big", "z", "f"), Arrays.asList(m.keySet().toArray()));
        assertNull(Json.parse("null"));
        assertEquals(0, ((List<Object>) Json.parse("[ ]")).size());
    }

    @Test
    public void rejectsInvalidJsonWithAPosition() {
        assertBad("{\"a\": 1,}", "expected a string key at line 1, column 9");
        assertBad("[1, 2", "expected ']'");
        assertBad("{\"a\" 1}", "expected ':'");
        assertBad("\"abc", "unterminated string");
        assertBad("01", "unexpected text after the JSON value");
        assertBad("1.", "no digit after '.'");
        assertBad("[1]\n x", "at line 2, column 2");
        assertBad("\"a\tb\"", "control character");
        assertBad("tru", "expected true");
        assertBad("", "unexpected end of text");
        assertBad("\"\\x\"", "bad escape");
    }
}
