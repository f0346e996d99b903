//! Text from registries and signatures made safe for a terminal. Anyone who can push an artifact
//! or sign one chooses its strings; printed raw, an escape sequence clears the screen, rewrites
//! what was printed before, or writes the reader's clipboard (OSC 52). Every CLI output — text
//! and JSON, errors and status — goes through here.

/// Characters a terminal acts on instead of showing: every control character (C0 such as ESC,
/// DEL, and C1 such as U+009B, the one-character CSI), the line and paragraph separators, and
/// the bidirectional formatting characters that reorder what a reader sees (Trojan Source).
pub fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{2028}' | '\u{2029}')
        || ('\u{202A}'..='\u{202E}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// `text` with every unprintable character replaced by a space (what errors and status do).
pub fn printable(text: &str) -> String {
    text.chars().map(|c| if is_unprintable(c) { ' ' } else { c }).collect()
}

/// Serialised JSON with every unprintable character escaped as `\uXXXX`: the same JSON values
/// (such characters can only occur inside its strings; the newlines and indentation of pretty
/// printing are kept), nothing a terminal acts on. serde_json escapes C0 controls but writes DEL,
/// C1 controls and the bidirectional characters raw.
pub fn printable_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if is_unprintable(c) && c != '\n' {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an artifact or a certificate can carry: CSI and OSC sequences (7- and 8-bit), screen
    /// clears, clipboard writes, cursor moves, carriage returns that overwrite a line, and
    /// bidirectional overrides.
    pub const HOSTILE: [&str; 9] = [
        "\u{1b}[2J\u{1b}[H",
        "\u{1b}]52;c;ZWNobyBwd25lZA==\u{7}",
        "\u{1b}]8;;http://evil/\u{1b}\\link\u{1b}]8;;\u{1b}\\",
        "\u{9b}31m red",
        "\u{9d}0;title\u{9c}",
        "ok\rFAKE",
        "a\u{7f}b\u{8}c",
        "\u{202e}txt.exe\u{202c}",
        "\u{2067}x\u{2069}\u{2028}y",
    ];

    /// Independent of [`is_unprintable`]: C0, DEL, C1, the separators and the bidi controls.
    fn acts_on_a_terminal(c: char) -> bool {
        matches!(u32::from(c), 0..=0x1f | 0x7f..=0x9f | 0x61c | 0x200e | 0x200f | 0x2028..=0x202e | 0x2066..=0x2069)
    }

    #[test]
    fn nothing_a_terminal_acts_on_survives() {
        for text in HOSTILE {
            assert!(text.chars().any(acts_on_a_terminal), "the case itself is hostile: {text:?}");
            let shown = printable(text);
            assert!(!shown.chars().any(acts_on_a_terminal), "{shown:?}");
            assert_eq!(shown.chars().count(), text.chars().count(), "one for one: {text:?}");
        }
        assert_eq!(printable("model.safetensors ünïcode ✓"), "model.safetensors ünïcode ✓");
    }

    #[test]
    fn json_keeps_its_values_and_loses_the_escapes() {
        for text in HOSTILE {
            let raw = serde_json::to_string_pretty(&serde_json::json!({"a": text, "b": [text]})).unwrap();
            let shown = printable_json(&raw);
            assert!(!shown.chars().any(|c| acts_on_a_terminal(c) && c != '\n'), "{shown:?}");
            let back: serde_json::Value = serde_json::from_str(&shown).unwrap();
            assert_eq!(back["a"], text, "the same value");
            assert_eq!(back["b"][0], text);
        }
    }
}
