//! Tag values: any string becomes a tag InfluxDB accepts and reads back as docs/semantics.md
//! documents.

use super::*;

/// What InfluxDB reads back for a text tag value, written from docs/semantics.md's mapping (not from the
/// encoder): `\` as `＼`; `\n`, `\r`, `\t` as two characters; other control characters, U+2028,
/// U+2029, the bidirectional controls and `＼` itself as `\u{hex}`; the empty value as `(empty)`
/// and `(empty)` as `\u{28}empty)`; a value longer than 4096 bytes in the line (where `,`, `=` and
/// ` ` take a backslash more) cut after its last whole character that fits with 12 bytes to
/// spare, then `…#` and the CRC-32 of the whole value in 8 lowercase hex digits.
fn documented_tag(value: &str) -> String {
    match value {
        "" => return "(empty)".into(),
        "(empty)" => return "\\u{28}empty)".into(),
        _ => {}
    }
    let pieces: Vec<String> = value
        .chars()
        .map(|c| {
            let hidden = matches!(
                u32::from(c),
                0..=0x1f
                    | 0x7f..=0x9f
                    | 0x61c
                    | 0x200e
                    | 0x200f
                    | 0x2028
                    | 0x2029
                    | 0x202a..=0x202e
                    | 0x2066..=0x2069
                    | 0xff3c
            );
            match c {
                '\\' => "\u{ff3c}".to_owned(),
                '\n' => "\\n".to_owned(),
                '\r' => "\\r".to_owned(),
                '\t' => "\\t".to_owned(),
                _ if hidden => format!("\\u{{{:x}}}", u32::from(c)),
                _ => c.to_string(),
            }
        })
        .collect();
    let in_line = |piece: &str| piece.len() + piece.matches([',', '=', ' ']).count();
    if pieces.iter().map(|p| in_line(p)).sum::<usize>() <= 4_096 {
        return pieces.concat();
    }
    let mut kept = String::new();
    let mut size = 0;
    for piece in &pieces {
        size += in_line(piece);
        if size > 4_096 - 12 {
            break;
        }
        kept.push_str(piece);
    }
    format!("{kept}…#{:08x}", crc32(value.as_bytes()))
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's), bit by bit.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Characters that have broken, or could break, a tag value: separators, escapes, every kind of
/// control and invisible character, look-alikes of the escapes, astral characters.
const HOSTILE: &[char] = &[
    ',',
    '=',
    ' ',
    '\\',
    '"',
    '\'',
    '#',
    '(',
    ')',
    '{',
    '}',
    'u',
    'n',
    '\n',
    '\r',
    '\t',
    '\0',
    '\u{1}',
    '\u{1b}',
    '\u{1f}',
    '\u{7f}',
    '\u{80}',
    '\u{85}',
    '\u{9f}',
    '\u{a0}',
    '\u{ad}',
    '\u{301}',
    '\u{61c}',
    '\u{200b}',
    '\u{200d}',
    '\u{200e}',
    '\u{202e}',
    '\u{2028}',
    '\u{2029}',
    '\u{2066}',
    '\u{2069}',
    '\u{2026}',
    '\u{e000}',
    '\u{feff}',
    '\u{fffd}',
    '\u{ffff}',
    '\u{ff3c}',
    '\u{1f600}',
    '\u{1f468}',
    '\u{10ffff}',
    'é',
    'ß',
    '中',
];

/// A random hostile string: short mostly, sometimes long, now and then over 64 KiB.
fn hostile_string(rng: &mut rand::rngs::StdRng) -> String {
    use rand::RngExt as _;
    let len = match rng.random_range(0..100) {
        0..70 => rng.random_range(0..12),
        70..97 => rng.random_range(12..300),
        _ => rng.random_range(20_000..70_000),
    };
    (0..len)
        .map(|_| match rng.random_range(0..3) {
            0 => HOSTILE[rng.random_range(0..HOSTILE.len())],
            1 => char::from(rng.random_range(b' '..=b'~')),
            _ => loop {
                if let Some(c) = char::from_u32(rng.random_range(0..0x11_0000)) {
                    break c;
                }
            },
        })
        .collect()
}

/// The strings that once failed, or were meant to: control characters only, empty, a trailing
/// backslash, the escapes' look-alikes, 64 KiB of separators.
fn hostile_classics() -> Vec<String> {
    let mut classics: Vec<String> = [
        "",
        "\u{1}",
        "\u{1}\u{2}\u{7f}",
        "\0",
        "\u{85}",
        "(empty)",
        "\\",
        "\\\\",
        "a\\",
        "\u{ff3c}",
        "\\u{1}",
        "\u{2028}",
        "\u{202e}evil",
        "\u{feff}",
        "unknown",
        " ",
        ",",
        "=",
        "\n",
        "\\n",
        "…#00000000",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    classics.push(",".repeat(65_536));
    classics.push("x".repeat(65_536));
    classics.push(format!("{}\\", "é".repeat(40_000)));
    classics.push("\u{1}".repeat(70_000));
    classics
}

/// One all-time `country` row per value, its `clicks` the value's index, and `state` rows for
/// pairs of them (`clicks` = `1_000_000` + the pair's index).
fn tag_batch(values: &[String]) -> Batch {
    let mut changes: Vec<Change> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            aggregate(
                Dimension::Country(Some(v.as_str().into())),
                None,
                Some(totals(i as i64, 0, 0, 0)),
            )
        })
        .collect();
    for (k, pair) in values.chunks_exact(2).enumerate() {
        changes.push(aggregate(
            Dimension::State(Some((pair[0].as_str().into(), pair[1].as_str().into()))),
            None,
            Some(totals(1_000_000 + k as i64, 0, 0, 0)),
        ));
    }
    batch(T, changes)
}

/// The tag values InfluxDB 1.x reads from one line, parsed as its `models/points.go` does: a tag
/// value ends at a `,` or ` ` not preceded by a backslash, must not be empty nor hold an `=` not
/// preceded by one, and is then unescaped (`\,`, `\ `, `\=`, in that order); the line holds no
/// line break; the series key is at most 65,535 bytes.
fn influx1_tags(line: &str) -> Result<Vec<(String, String)>, String> {
    let line = line.strip_suffix('\n').ok_or("no line break at the end")?;
    if line.contains('\n') {
        return Err("a line break inside the line".into());
    }
    let buf = line.as_bytes();
    let escaped = |i: usize| i > 0 && buf[i - 1] == b'\\';
    // The measurement ends at the first unescaped `,` or ` `.
    let mut i = (0..buf.len())
        .find(|&i| (buf[i] == b',' || buf[i] == b' ') && !escaped(i))
        .ok_or("no fields")?;
    let mut tags = Vec::new();
    while buf[i] == b',' {
        let key_start = i + 1;
        let eq = (key_start..buf.len())
            .find(|&j| buf[j] == b'=' && !escaped(j))
            .ok_or("missing tag value")?;
        let value_start = eq + 1;
        if value_start >= buf.len() || buf[value_start] == b',' || buf[value_start] == b' ' {
            return Err("missing tag value".into());
        }
        let mut j = value_start;
        loop {
            j += 1;
            if j >= buf.len() {
                return Err("missing fields".into());
            }
            if buf[j] == b'=' && !escaped(j) {
                return Err("invalid tag format".into());
            }
            if (buf[j] == b',' || buf[j] == b' ') && !escaped(j) {
                break;
            }
        }
        let unescape = |s: &str| {
            s.replace("\\,", ",")
                .replace("\\ ", " ")
                .replace("\\=", "=")
        };
        tags.push((
            unescape(&line[key_start..eq]),
            unescape(&line[value_start..j]),
        ));
        i = j;
    }
    if i > 65_535 {
        return Err(format!("max key length exceeded: {i} > 65535"));
    }
    Ok(tags)
}

/// Encodes a `country` and a `state` row of hostile values, parses the lines as InfluxDB 1.x
/// does, and compares every tag with the documented mapping.
fn check_hostile(country: &str, state: &str) -> Result<(), TestCaseError> {
    let encoded = encode(&batch(
        T,
        vec![
            aggregate(
                Dimension::Country(Some(country.into())),
                None,
                Some(totals(1, 0, 0, 0)),
            ),
            aggregate(
                Dimension::State(Some((country.into(), state.into()))),
                None,
                Some(totals(1, 0, 0, 0)),
            ),
        ],
    ));
    let lines: Vec<String> = encoded.split_inclusive('\n').map(str::to_owned).collect();
    prop_assert_eq!(lines.len(), 2, "{:?}", encoded);
    let mut read = Vec::new();
    for line in &lines {
        let tags = influx1_tags(line).map_err(|e| TestCaseError::fail(format!("{e}: {line:?}")))?;
        read.push(tags);
    }
    let (country_tag, state_tag) = (documented_tag(country), documented_tag(state));
    let expected = vec![
        vec![
            ("country".to_owned(), country_tag.clone()),
            ("window".to_owned(), "all".to_owned()),
        ],
        vec![
            ("country".to_owned(), country_tag),
            ("state".to_owned(), state_tag),
            ("window".to_owned(), "all".to_owned()),
        ],
    ];
    read.sort();
    let mut expected = expected;
    expected.sort();
    prop_assert_eq!(read, expected);
    Ok(())
}

fn hostile_char() -> impl Strategy<Value = char> {
    prop_oneof![
        2 => proptest::sample::select(HOSTILE),
        1 => any::<char>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3_000))]

    /// Any string, as a tag, is one InfluxDB 1.x parses, and reads back as documented.
    #[test]
    fn any_string_is_a_tag_influxdb_accepts_and_reads_back_as_documented(
        country in proptest::collection::vec(hostile_char(), 0..24),
        state in proptest::collection::vec(hostile_char(), 0..24),
    ) {
        let (country, state): (String, String) = (country.into_iter().collect(), state.into_iter().collect());
        check_hostile(&country, &state)?;
    }

    /// Distinct strings of confusable characters stay distinct tags.
    #[test]
    fn distinct_strings_stay_distinct_tags(
        a in proptest::collection::vec(proptest::sample::select(&['\\', '\u{ff3c}', 'u', '{', '}', '1', '\u{1}', '\n', 'n', '(', ')', 'e'][..]), 0..8),
        b in proptest::collection::vec(proptest::sample::select(&['\\', '\u{ff3c}', 'u', '{', '}', '1', '\u{1}', '\n', 'n', '(', ')', 'e'][..]), 0..8),
    ) {
        let (a, b): (String, String) = (a.into_iter().collect(), b.into_iter().collect());
        let tag = |v: &str| -> Result<String, TestCaseError> {
            let line = encode(&batch(T, vec![aggregate(Dimension::Country(Some(v.into())), None, Some(totals(1, 0, 0, 0)))]));
            let tags = influx1_tags(&line).map_err(TestCaseError::fail)?;
            Ok(tags[0].1.clone())
        };
        prop_assert_eq!(a == b, tag(&a)? == tag(&b)?, "{:?} {:?}", a, b);
    }
}

#[test]
fn long_empty_and_control_only_strings_are_tags_influxdb_accepts() {
    let classics = hostile_classics();
    for (i, value) in classics.iter().enumerate() {
        check_hostile(value, &classics[classics.len() - 1 - i]).unwrap();
    }
    // Every value's tag takes at most 4096 bytes in the line; the distinct ones stay distinct.
    let tags: std::collections::BTreeSet<String> =
        classics.iter().map(|v| documented_tag(v)).collect();
    assert_eq!(tags.len(), classics.len());
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926, "the oracle's CRC-32");
    let cut = documented_tag(&",".repeat(65_536));
    assert_eq!(
        cut,
        format!("{}…#{:08x}", ",".repeat(2_042), crc32(&[b','; 65_536]))
    );
}

#[test]
#[ignore = "needs InfluxDB: run scripts/test-all"]
fn thousands_of_hostile_strings_are_written_and_read_back_as_documented() {
    use rand::SeedableRng as _;
    let db = TestDb::created("hostile_tags");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7A65);
    let mut values = hostile_classics();
    let mut seen: std::collections::BTreeSet<String> = values.iter().cloned().collect();
    while values.len() < 3_000 {
        let value = hostile_string(&mut rng);
        if seen.insert(value.clone()) {
            values.push(value);
        }
    }
    // The mapping is one to one here, so every value is a series of its own.
    let tags: Vec<String> = values.iter().map(|v| documented_tag(v)).collect();
    assert_eq!(
        tags.iter().collect::<std::collections::BTreeSet<_>>().len(),
        values.len()
    );
    let batch = tag_batch(&values);
    let mut sink = db.sink(|_| {});
    let stats = sink.stats();
    sink.write_batch(&batch).expect("queued");
    sink.finish().expect("every line accepted");
    let pairs = values.len() / 2;
    assert_eq!(sink.written(), (values.len() + pairs) as u64);
    assert_eq!(stats.snapshot().rejected_lines, 0);

    let mut countries = 0;
    for row in rows(&db.name, "SELECT clicks, country FROM country") {
        let i = row["clicks"].as_u64().unwrap() as usize;
        assert_eq!(
            row["country"].as_str().unwrap(),
            tags[i],
            "value {i}: {:?}",
            values[i]
        );
        countries += 1;
    }
    assert_eq!(countries, values.len());
    let mut states = 0;
    for row in rows(&db.name, "SELECT clicks, country, \"state\" FROM \"state\"") {
        let k = row["clicks"].as_u64().unwrap() as usize - 1_000_000;
        assert_eq!(
            (
                row["country"].as_str().unwrap(),
                row["state"].as_str().unwrap()
            ),
            (tags[2 * k].as_str(), tags[2 * k + 1].as_str()),
            "pair {k}"
        );
        states += 1;
    }
    assert_eq!(states, pairs);
}
