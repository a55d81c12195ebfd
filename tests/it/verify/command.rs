//! The built binary: its exit codes, and after a real run on real services, before and after
//! corrupting InfluxDB.

use super::*;

#[test]
fn verify_exits_2_when_it_cannot_decide() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .arg("verify")
        .env("SHOPFLOW__INFLUX__API", "v2")
        .env("SHOPFLOW__INFLUX__ORG", "shop")
        .env("SHOPFLOW__INFLUX__TOKEN", "t0ken")
        .env("SHOPFLOW__INFLUX__CREATE_DATABASE", "false")
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "error: verify reads InfluxDB with the 1.x query API (GET /query): influx.api must be \"v1\"\n"
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_shopflow"))
        .args(["verify", "--arrival-tolerance", "soon"])
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(2));
}

/// Each family's (compared, mismatched, skipped), by the name the report gives it.
type Tallies = BTreeMap<String, (u64, u64, u64)>;

/// A verify report's table, and its mismatch lines.
fn parse_report(stdout: &str) -> (Tallies, Vec<String>) {
    let mut families = BTreeMap::new();
    let mut mismatches = Vec::new();
    for line in stdout.lines() {
        if let Some(mismatch) = line.strip_prefix("mismatch: ") {
            mismatches.push(mismatch.to_owned());
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let (name, numbers) = match words.as_slice() {
            ["pipeline", rest @ ..] => ("pipeline".to_owned(), rest),
            [measurement, window, rest @ ..] if window.starts_with("window=") => {
                (format!("{measurement} {window}"), rest)
            }
            _ => continue,
        };
        let numbers: Vec<u64> = numbers
            .iter()
            .take(3)
            .filter_map(|n| n.parse().ok())
            .collect();
        if let [compared, mismatched, skipped] = numbers[..] {
            families.insert(name, (compared, mismatched, skipped));
        }
    }
    (families, mismatches)
}

/// The last point of one all-time series: its tags and `[clicks, purchases, units, revenue_cents]`
/// and conversion.
fn last_all_time(
    url: &str,
    database: &str,
    measurement: &str,
    filter: &str,
) -> (BTreeMap<String, String>, [i64; 4], f64) {
    let answer = influx::answer(
        url,
        database,
        &format!(
            "SELECT LAST(clicks), LAST(purchases), LAST(units), LAST(revenue_cents), LAST(conversion) \
             FROM \"{measurement}\" WHERE \"window\" = 'all' {filter} GROUP BY * LIMIT 1"
        ),
    );
    let series = &answer["results"][0]["series"][0];
    let tags = series["tags"]
        .as_object()
        .expect("tags")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
        .collect();
    let row = &series["values"][0];
    let int = |i: usize| row[i].as_i64().expect("an integer field");
    (
        tags,
        [int(1), int(2), int(3), int(4)],
        row[5].as_f64().expect("conversion"),
    )
}

#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn verify_passes_after_a_real_run_then_names_each_corrupted_key() {
    use std::process::Command;
    use std::time::Duration;

    use shopflow::generators::demographics;
    use shopflow::generators::events::{EventGenerator, GeneratorKnobs};
    use shopflow::writers;
    use shopflow::writers::kafka::EventProducer;

    use crate::support::scenario::knobs;

    let test_database = crate::support::services::TestDatabase::create("shopflow_verify");
    let (influx_url, brokers, database, _, mysql_config) = test_database.parts();
    let (seed, users, new_users) = (31, 20_000u32, 300u32);
    test_database.load_demographics(seed, users);
    let kafka = test_database.topic("shopflow-verify", 4);
    let topic = kafka.topic.clone();

    // `run` and `verify` read the same configuration, as a user's deployment would: the default
    // window, lateness (2 minutes) and order horizon (10 minutes), a 250 ms tick.
    let settings = [
        ("SHOPFLOW__KAFKA__BROKERS", brokers.as_str()),
        ("SHOPFLOW__KAFKA__TOPIC", topic.as_str()),
        ("SHOPFLOW__KAFKA__GROUP_ID", topic.as_str()),
        ("SHOPFLOW__MYSQL__URL", mysql_config.url.as_str()),
        ("SHOPFLOW__INFLUX__URL", influx_url.as_str()),
        ("SHOPFLOW__INFLUX__DATABASE", database.as_str()),
        ("SHOPFLOW__ENGINE__TICK_MS", "250"),
    ];
    let shopflow = |args: &[&str], extra: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_shopflow"));
        command.args(args);
        for (key, value) in settings.iter().chain(extra) {
            command.env(key, value);
        }
        command
    };
    let pipeline = shopflow(
        &["run", "-w", "2", "--duration", "20s", "--start", "earliest"],
        &[],
    )
    .spawn()
    .expect("shopflow runs");

    // 12,000 events in 4 s, late (up to 3 minutes), refunded, duplicated, of unknown users, while
    // 150 demographic changes happen; then malformed messages.
    let knobs = GeneratorKnobs {
        new_users,
        max_lateness_ms: 180_000,
        ..knobs(seed, users, 3_000.0)
    };
    let events = 12_000u64;
    let generator =
        EventGenerator::new(knobs, shopflow::runtime::now_ms() + 1_000).expect("valid knobs");
    let changer = {
        let config = mysql_config.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            let mut changes = demographics::Changes::new(seed, users, new_users);
            writers::mysql::apply_changes(&config, &mut changes, 50.0, Duration::from_secs(10), 150)
                .expect("changes applied")
        })
    };
    let mut producer = EventProducer::new(&kafka).expect("a producer");
    let sent = crate::support::kafka::produce(&mut producer, &generator, events);
    assert_eq!(sent, events);
    let malformed = crate::support::services::send_malformed(&mut producer);
    producer.flush(Duration::from_secs(10)).expect("flushed");
    assert_eq!(changer.join().expect("the changer").changes, 150);
    let output = pipeline.wait_with_output().expect("the pipeline ends");
    assert!(output.status.success(), "the pipeline failed");

    let verify = || {
        let output = shopflow(&["verify", "--arrival-tolerance", "20s"], &[])
            .output()
            .expect("verify runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), stdout, stderr)
    };

    // What the pipeline wrote is what the sources say.
    let (code, stdout, stderr) = verify();
    eprintln!("{stdout}");
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let (families, mismatches) = parse_report(&stdout);
    assert!(mismatches.is_empty(), "{stdout}");
    assert_eq!(families.len(), 13, "{stdout}");
    for (family, (compared, mismatched, _)) in &families {
        assert!(*compared > 0, "{family} compared nothing: {stdout}");
        assert_eq!(*mismatched, 0, "{stdout}");
    }
    assert!(
        stdout.contains(&format!(
            "{} messages up to the high watermarks",
            events + malformed as u64
        )) && stdout.contains(&format!("({events} events, {malformed} malformed)")),
        "{stdout}"
    );
    assert!(
        stdout.ends_with(&format!(
            "verify: OK: {} keys compared, none differ\n",
            families.values().map(|f| f.0).sum::<u64>()
        )),
        "{stdout}"
    );

    // A wrong value: a later point of an all-time series.
    let later = shopflow::runtime::now_ms() + 1_000;
    let (_, [clicks, purchases, units, cents], conversion) =
        last_all_time(&influx_url, &database, "campaign", "AND \"campaign\" = '0'");
    let line = |clicks: i64, time: u64| {
        format!(
            "campaign,campaign=0,window=all clicks={clicks}i,purchases={purchases}i,units={units}i,\
             revenue_cents={cents}i,conversion={conversion} {time}\n"
        )
    };
    influx::write(&influx_url, &database, &line(clicks + 1, later));
    let (code, stdout, stderr) = verify();
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(
        parse_report(&stdout).1,
        vec![format!(
            "campaign,campaign=0,window=all: clicks expected {clicks}, found {}",
            clicks + 1
        )],
        "{stdout}"
    );
    assert!(stdout.contains("\nverify: MISMATCH: 1 of "), "{stdout}");
    influx::write(&influx_url, &database, &line(clicks, later + 1));

    // A series deleted.
    let (tags, values, conversion) = last_all_time(
        &influx_url,
        &database,
        "campaign_country",
        "AND \"campaign\" = '1'",
    );
    let country = tags["country"].clone();
    let _ = influx::answer(
        &influx_url,
        &database,
        &format!(
            "DROP SERIES FROM \"campaign_country\" WHERE \"campaign\" = '1' AND \"country\" = '{country}' AND \"window\" = 'all'"
        ),
    );
    let (code, stdout, stderr) = verify();
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(
        parse_report(&stdout).1,
        vec![format!(
            "campaign_country,campaign=1,country={country},window=all: missing from InfluxDB \
             (expected clicks={} purchases={} units={} revenue_cents={})",
            values[0], values[1], values[2], values[3]
        )],
        "{stdout}"
    );
    influx::write(
        &influx_url,
        &database,
        &format!(
            "campaign_country,campaign=1,country={country},window=all clicks={}i,purchases={}i,\
             units={}i,revenue_cents={}i,conversion={conversion} {later}\n",
            values[0], values[1], values[2], values[3]
        ),
    );

    // A series added, and a window's point overwritten.
    let answer = influx::answer(
        &influx_url,
        &database,
        "SELECT LAST(clicks) FROM \"campaign\" WHERE \"window\" <> 'all' AND \"campaign\" = '0'",
    );
    let window = answer["results"][0]["series"][0]["values"][0][0]
        .as_u64()
        .expect("the newest window of campaign 0");
    let (window_clicks, label) = {
        let answer = influx::answer(
            &influx_url,
            &database,
            &format!(
                "SELECT clicks, purchases, units, revenue_cents, conversion FROM \"campaign\" \
                 WHERE \"window\" <> 'all' AND \"campaign\" = '0' AND time = {window}ms GROUP BY \"window\""
            ),
        );
        let series = &answer["results"][0]["series"][0];
        (
            series["values"][0][1].as_i64().expect("clicks"),
            series["tags"]["window"]
                .as_str()
                .expect("a label")
                .to_owned(),
        )
    };
    influx::write(
        &influx_url,
        &database,
        &format!(
            "country,country=ZZ,window=all clicks=3i,purchases=0i,units=0i,revenue_cents=0i,conversion=0 {later}\n\
             campaign,campaign=0,window={label} clicks={}i {window}\n",
            window_clicks + 5
        ),
    );
    let (code, stdout, stderr) = verify();
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let (families, mismatches) = parse_report(&stdout);
    assert_eq!(
        mismatches,
        vec![
            format!(
                "campaign,campaign=0,window={label} @{window}: clicks expected {window_clicks}, found {}",
                window_clicks + 5
            ),
            "country,country=ZZ,window=all: in InfluxDB but should be zero or absent \
             (found clicks=3 purchases=0 units=0 revenue_cents=0)"
                .to_owned(),
        ],
        "{stdout}"
    );
    assert_eq!(families["campaign window=60s"].1, 1, "{stdout}");
    assert_eq!(families["country window=all"].1, 1, "{stdout}");

    // A database that does not exist: no verdict.
    let output = shopflow(
        &["verify"],
        &[("SHOPFLOW__INFLUX__DATABASE", "shopflow_verify_no_such_db")],
    )
    .output()
    .expect("verify runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("database not found"), "{stderr}");
}

/// The pipeline and `verify` on real services, with every kind of message the reader rejects,
/// events without an event time, purchases whose sum exceeds 64 bits (the total's bound off),
/// and demographics rows that do not convert: the pipeline counts each rejection and each
/// skipped row (naming its id in the log), writes the clamped sums, and `verify` agrees on every
/// counter and row.
#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn verify_agrees_on_every_rejection_skipped_row_and_huge_sum() {
    use std::process::Command;

    use mysql::prelude::Queryable;
    use shopflow::writers::kafka::EventProducer;

    let test_database = crate::support::services::TestDatabase::create("shopflow_verify_counters");
    let (influx_url, brokers, database, pool, mysql_config) = test_database.parts();
    let users = 50u32;
    test_database.load_demographics(5, users);
    let invalid = [(900u32, "Q"), (901, "Z"), (902, "?")];
    let mut conn = pool.get_conn().expect("a connection");
    for (id, gender) in invalid {
        conn.exec_drop(
            format!(
                "INSERT INTO `{database}`.demographics (id, age, gender, state, country) \
                 VALUES (?, 30, ?, 'CA', 'US')"
            ),
            (id, gender),
        )
        .expect("an invalid row");
    }
    let kafka = test_database.topic("shopflow-verify-counters", 2);
    let topic = kafka.topic.clone();

    let now = shopflow::runtime::now_ms();
    let event = |order: u64, tag: Tag, total: i64, units: u32, event_time: u64| Event {
        order_id: OrderId(order),
        tag,
        user_id: UserId((order % u64::from(users)) as u32),
        campaign_id: CampaignId((order % 3) as u32),
        total: Cents(total),
        units,
        event_time: EventTimeMs(event_time),
    };
    let mut producer = EventProducer::new(&kafka).expect("a producer");
    let mut send = |e: &Event| producer.send(e, shopflow::runtime::now_ms()).expect("sent");
    // 5,000 purchases of the largest total: 2^51 cents each, 1.1e19 in all, on campaign 7.
    let huge = 5_000u64;
    for n in 0..huge {
        send(&Event {
            campaign_id: CampaignId(7),
            ..event(
                n,
                Tag::Purchased,
                shopflow::sources::avro::MAX_CENTS,
                1,
                now,
            )
        });
    }
    // Clicks and purchases, some without an event time.
    for n in 10_000..10_200u64 {
        let time = if n % 4 == 0 { 0 } else { now - 5_000 };
        send(&event(n, Tag::Click, 0, 0, time));
        if n % 2 == 0 {
            send(&event(n, Tag::Purchased, 4_200, 2, time));
        }
    }
    // What the reader rejects, by counter.
    let rejected = [
        (
            Counter::RejectedNegative,
            event(20_000, Tag::Purchased, -100, 1, now),
        ),
        (
            Counter::RejectedNegative,
            event(20_001, Tag::Purchased, 100, u32::MAX, now),
        ),
        (
            Counter::RejectedImplausible,
            event(20_002, Tag::Purchased, 100, 2_000_000, now),
        ),
        (Counter::RejectedTooOld, event(20_003, Tag::Click, 0, 0, 1)),
        (
            Counter::RejectedFuture,
            event(20_004, Tag::Click, 0, 0, now + 86_400_000),
        ),
    ];
    for (_, e) in &rejected {
        send(e);
    }
    producer
        .send_raw(b"k", &vec![0u8; 70_000], shopflow::runtime::now_ms())
        .expect("sent");
    let malformed = crate::support::services::send_malformed(&mut producer);
    producer
        .flush(std::time::Duration::from_secs(10))
        .expect("flushed");

    let settings = [
        ("SHOPFLOW__KAFKA__BROKERS", brokers.as_str()),
        ("SHOPFLOW__KAFKA__TOPIC", topic.as_str()),
        ("SHOPFLOW__KAFKA__GROUP_ID", topic.as_str()),
        // No bound on totals, so that the huge purchases count; units stay bounded.
        ("SHOPFLOW__KAFKA__MAX_ORDER_CENTS", "0"),
        ("SHOPFLOW__MYSQL__URL", mysql_config.url.as_str()),
        ("SHOPFLOW__INFLUX__URL", influx_url.as_str()),
        ("SHOPFLOW__INFLUX__DATABASE", database.as_str()),
        ("SHOPFLOW__ENGINE__TICK_MS", "250"),
        ("RUST_LOG", "info"),
    ];
    let shopflow = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_shopflow"));
        command.args(args).envs(settings);
        command
    };
    let run = shopflow(&["run", "-w", "2", "--until-caught-up", "--start", "earliest"])
        .output()
        .expect("shopflow runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    // Each skipped row is logged with its id and why, at most once a second: the snapshot's
    // first at least.
    assert!(
        stderr.contains("skipping a demographics row") && stderr.contains("id 900: gender"),
        "{stderr}"
    );

    let answer = influx::answer(&influx_url, &database, "SELECT LAST(*) FROM \"pipeline\"");
    let series = &answer["results"][0]["series"][0];
    let columns: Vec<&str> = series["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c.as_str().expect("a name"))
        .collect();
    let counter = |counter: Counter| {
        let at = columns
            .iter()
            .position(|c| *c == format!("last_{}", counter.name()))
            .unwrap_or_else(|| panic!("{counter:?} written: {answer}"));
        series["values"][0][at].as_i64().expect("an integer")
    };
    assert_eq!(counter(Counter::DemographicsSkipped), invalid.len() as i64);
    for kind in [
        Counter::RejectedNegative,
        Counter::RejectedImplausible,
        Counter::RejectedTooOld,
        Counter::RejectedFuture,
    ] {
        let want = rejected.iter().filter(|(c, _)| *c == kind).count() as i64;
        assert_eq!(counter(kind), want, "{kind:?}");
    }
    assert_eq!(counter(Counter::MalformedOversize), 1);
    assert_eq!(counter(Counter::EventsIn), huge as i64 + 300);
    let (_, [_, purchases, _, revenue_cents], _) =
        last_all_time(&influx_url, &database, "campaign", "AND \"campaign\" = '7'");
    assert_eq!(purchases, huge as i64);
    assert_eq!(revenue_cents, i64::MAX, "clamped, not wrapped");

    let output = shopflow(&["verify", "--arrival-tolerance", "20s"])
        .output()
        .expect("verify runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    let rejections = rejected.len() as i64 + 1 + malformed;
    assert!(
        stdout.contains(&format!("({} events, {rejections} malformed)", huge + 300)),
        "{stdout}"
    );
}
