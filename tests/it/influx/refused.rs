//! Lines InfluxDB refuses: counted, the others written, the run goes on.

use super::*;

#[test]
#[ignore = "needs InfluxDB: run scripts/test-all"]
fn lines_influxdb_refuses_are_counted_and_every_other_line_is_written() {
    let db = TestDb::created("refused");
    let dir = tempfile::tempdir().unwrap();
    let rejects = dir.path().join("rejects.lp");
    let client = InfluxClient::new(&InfluxConfig {
        rejects_file: rejects.clone(),
        ..config(&influx_url(), &db.name)
    })
    .unwrap();
    // Line 17 does not parse; line 60 conflicts with the integer type of `x`.
    let body: String = (0..100)
        .map(|i| match i {
            17 => "m x=1i,y 1000\n".to_owned(),
            60 => format!("m,k=60 x=\"text\" {}\n", T + 60),
            i => format!("m,k={i} x={i}i {}\n", T + i),
        })
        .collect();
    client
        .write(body.as_bytes())
        .expect("refused lines do not fail the write");
    let stats = client.stats().snapshot();
    assert_eq!(
        (stats.failed, stats.rejected_lines, stats.lines_written),
        (0, 2, 98)
    );
    let points: Vec<(u64, i64)> = rows(&db.name, "SELECT x FROM m")
        .iter()
        .map(|r| (r["time"].as_u64().unwrap(), r["x"].as_i64().unwrap()))
        .collect();
    let expected: Vec<(u64, i64)> = (0..100u64)
        .filter(|i| ![17, 60].contains(i))
        .map(|i| (T + i, i as i64))
        .collect();
    assert_eq!(points, expected);
    let refused = std::fs::read_to_string(&rejects).unwrap();
    let entries: Vec<&str> = refused.lines().collect();
    assert_eq!(entries.len(), 4, "{refused}");
    assert!(
        entries[0].starts_with("# HTTP 400: unable to parse 'm x=1i,y 1000'"),
        "{refused}"
    );
    assert_eq!(entries[1], "m x=1i,y 1000");
    assert!(
        entries[2].starts_with("# HTTP 400: partial write: field type conflict"),
        "{refused}"
    );
    assert_eq!(entries[3], format!("m,k=60 x=\"text\" {}", T + 60));

    // Through the sink: a `pipeline` field InfluxDB holds as a string refuses the sink's
    // integer; that line is counted, the rest of the batch written, and the run goes on.
    let db = TestDb::created("refused_sink");
    let client = InfluxClient::new(&config(&influx_url(), &db.name)).unwrap();
    client
        .write(format!("pipeline events_in=\"text\" {}\n", T - 1).as_bytes())
        .unwrap();
    let mut sink = db.sink(|_| {});
    let stats = sink.stats();
    let mut first = campaigns(T, 0, 40);
    first.changes.push(counter(Counter::EventsIn, 5));
    let mut second = campaigns(T + 1_000, 40, 40);
    second.changes.push(counter(Counter::EventsIn, 9));
    sink.write_batch(&first).unwrap();
    wait_for("the refusal", || stats.snapshot().rejected_lines == 1);
    sink.write_batch(&second).expect("the run goes on");
    sink.finish().expect("no failure");
    assert_eq!(sink.rejected_lines(), 2);
    assert_eq!(sink.written(), 80);
    assert_eq!(rows(&db.name, "SELECT * FROM campaign").len(), 80);
}
