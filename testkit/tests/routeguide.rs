//! `routeguide.RouteGuide` of `grpc-test-server`, driven by a native tonic client: all four
//! methods, the generated feature database, and the notes shared between `RouteChat` calls.

use std::time::Duration;

use testkit::grpc::pb::routeguide::route_guide_client::RouteGuideClient;
use testkit::grpc::pb::routeguide::{Feature, Point, Rectangle, RouteNote};
use testkit::grpc::routeguide::{distance, features, in_rectangle, FEATURE_COUNT};
use testkit::{GrpcServer, GrpcServerOpts};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

const BIN: &str = env!("CARGO_BIN_EXE_grpc-test-server");
const SECS5: Duration = Duration::from_secs(5);

fn start() -> GrpcServer {
    GrpcServer::start_bin(BIN.as_ref(), GrpcServerOpts::default())
}

async fn client(server: &GrpcServer) -> RouteGuideClient<Channel> {
    RouteGuideClient::new(server.channel().await)
}

fn point(latitude: i32, longitude: i32) -> Point {
    Point {
        latitude,
        longitude,
    }
}

fn rect(lo: Point, hi: Point) -> Rectangle {
    Rectangle {
        lo: Some(lo),
        hi: Some(hi),
    }
}

fn location(f: &Feature) -> Point {
    f.location.expect("database entries have a location")
}

fn note(p: Point, message: &str) -> RouteNote {
    RouteNote {
        location: Some(p),
        message: message.into(),
    }
}

#[test]
fn database_is_deterministic_and_spread_out() {
    let db = features();
    assert_eq!(db, features());
    assert_eq!(db.len(), FEATURE_COUNT);
    assert_eq!(db[17].name, "Feature 17, row 2, column 1");
    let unnamed = db.iter().filter(|f| f.name.is_empty()).count();
    assert_eq!(unnamed, FEATURE_COUNT / 5);
    let mut points: Vec<(i32, i32)> = db
        .iter()
        .map(|f| (location(f).latitude, location(f).longitude))
        .collect();
    points.sort_unstable();
    points.dedup();
    assert_eq!(points.len(), FEATURE_COUNT, "one entry per location");
    for (lat, lon) in points {
        assert!((400_000_000..=420_000_000).contains(&lat), "{lat}");
        assert!((-750_000_000..=-740_000_000).contains(&lon), "{lon}");
    }
}

#[test]
fn haversine_distances() {
    let origin = point(0, 0);
    // One degree along the equator and along a meridian: R * pi / 180 = 111,194.93 m.
    assert_eq!(distance(&origin, &point(0, 10_000_000)), 111_194);
    assert_eq!(distance(&origin, &point(10_000_000, 0)), 111_194);
    assert_eq!(distance(&point(0, 10_000_000), &origin), 111_194);
    assert_eq!(distance(&origin, &origin), 0);
    // One degree of longitude at 60 N is about half as long.
    let d = distance(&point(600_000_000, 0), &point(600_000_000, 10_000_000));
    assert!((55_590..=55_600).contains(&d), "{d}");
    // Antipodes: half the circumference.
    assert_eq!(
        distance(&origin, &point(0, 1_800_000_000)),
        (6_371_000.0 * std::f64::consts::PI) as i32
    );
}

#[tokio::test]
async fn get_feature() {
    let server = start();
    let mut rg = client(&server).await;
    for f in features() {
        let got = rg.get_feature(location(&f)).await.unwrap().into_inner();
        assert_eq!(got, f);
    }
    // Nothing there: an unnamed feature at the requested point.
    let nowhere = point(1, -1);
    let got = rg.get_feature(nowhere).await.unwrap().into_inner();
    assert_eq!(got.name, "");
    assert_eq!(got.location, Some(nowhere));
    // Close to a feature is not at it.
    let mut near = location(&features()[17]);
    near.latitude += 1;
    assert_eq!(rg.get_feature(near).await.unwrap().into_inner().name, "");
}

async fn list(rg: &mut RouteGuideClient<Channel>, r: Rectangle) -> Vec<Feature> {
    let mut stream = rg.list_features(r).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(f) = stream.message().await.unwrap() {
        got.push(f);
    }
    got
}

#[tokio::test]
async fn list_features() {
    let server = start();
    let mut rg = client(&server).await;
    let db = features();

    // Rows 2 and 3, columns 1 to 4 of the grid (each entry sits a little north-east of its
    // grid node, so the rectangle spans from one node to just before the next).
    let lo = point(405_000_000, -748_750_000);
    let hi = point(409_999_999, -743_750_001);
    let expected: Vec<Feature> = db
        .iter()
        .filter(|f| in_rectangle(&location(f), &rect(lo, hi)))
        .cloned()
        .collect();
    assert_eq!(expected.len(), 8);
    assert_eq!(expected[0].name, "Feature 17, row 2, column 1");
    assert_eq!(list(&mut rg, rect(lo, hi)).await, expected);
    // Corners in the other order, or the other diagonal: the same rectangle.
    assert_eq!(list(&mut rg, rect(hi, lo)).await, expected);
    let (nw, se) = (
        point(hi.latitude, lo.longitude),
        point(lo.latitude, hi.longitude),
    );
    assert_eq!(list(&mut rg, rect(nw, se)).await, expected);

    // Edges are inside; everything, unnamed entries included, in database order.
    let f = location(&db[30]);
    assert_eq!(list(&mut rg, rect(f, f)).await, vec![db[30].clone()]);
    let world = rect(
        point(-900_000_000, -1_800_000_000),
        point(900_000_000, 1_800_000_000),
    );
    assert_eq!(list(&mut rg, world).await, db);
    // An empty area: the stream ends at once with OK.
    assert!(list(&mut rg, rect(point(0, 0), point(10, 10)))
        .await
        .is_empty());
}

#[tokio::test]
async fn record_route() {
    let server = start();
    let mut rg = client(&server).await;
    let db = features();
    // Two features (one of them unnamed: it is still a database entry), two empty points.
    let route = vec![
        location(&db[0]),
        point(400_100_000, -749_900_000),
        location(&db[4]),
        point(0, 0),
    ];
    let expected_distance: i32 = route.windows(2).map(|w| distance(&w[0], &w[1])).sum();
    let summary = rg
        .record_route(tokio_stream::iter(route.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.point_count, 4);
    assert_eq!(summary.feature_count, 2);
    assert_eq!(summary.distance, expected_distance);
    assert!(summary.distance > 4_000_000, "{}", summary.distance);
    assert_eq!(summary.elapsed_time, 0);

    // No points: all zero.
    let empty = rg
        .record_route(tokio_stream::iter(Vec::<Point>::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(empty, Default::default());

    // Elapsed time counts from the call's start to the half-close, in whole seconds.
    let (tx, rx) = mpsc::channel(4);
    let call = tokio::spawn({
        let mut rg = rg.clone();
        async move { rg.record_route(ReceiverStream::new(rx)).await }
    });
    tx.send(location(&db[1])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    tx.send(location(&db[1])).await.unwrap();
    drop(tx);
    let slow = call.await.unwrap().unwrap().into_inner();
    assert_eq!(slow.point_count, 2);
    assert_eq!(slow.feature_count, 2);
    assert_eq!(slow.distance, 0);
    assert!(
        (1..=2).contains(&slow.elapsed_time),
        "{}",
        slow.elapsed_time
    );
}

/// The next `n` replies of a chat.
async fn replies(inbound: &mut Streaming<RouteNote>, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    for _ in 0..n {
        let note = tokio::time::timeout(SECS5, inbound.message())
            .await
            .expect("a reply within 5 s")
            .unwrap()
            .expect("the chat is still open");
        got.push(note.message);
    }
    got
}

#[tokio::test]
async fn route_chat() {
    let server = start();
    let mut rg = client(&server).await;
    let (a, b) = (point(1, 1), point(2, 2));
    let (tx, rx) = mpsc::channel(16);
    let mut inbound = rg
        .route_chat(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();

    // Each note brings back every note at its location so far, oldest first, itself last.
    tx.send(note(a, "a1")).await.unwrap();
    assert_eq!(replies(&mut inbound, 1).await, ["a1"]);
    tx.send(note(b, "b1")).await.unwrap();
    assert_eq!(replies(&mut inbound, 1).await, ["b1"]);
    tx.send(note(a, "a2")).await.unwrap();
    assert_eq!(replies(&mut inbound, 2).await, ["a1", "a2"]);
    tx.send(note(a, "a3")).await.unwrap();
    assert_eq!(replies(&mut inbound, 3).await, ["a1", "a2", "a3"]);

    // Notes are shared by the whole server: another call, on another connection, sees them.
    let mut other = client(&server).await;
    let (tx2, rx2) = mpsc::channel(16);
    let mut inbound2 = other
        .route_chat(ReceiverStream::new(rx2))
        .await
        .unwrap()
        .into_inner();
    tx2.send(note(b, "b2")).await.unwrap();
    assert_eq!(replies(&mut inbound2, 2).await, ["b1", "b2"]);
    drop(tx2);
    assert!(
        inbound2.message().await.unwrap().is_none(),
        "ends after half-close"
    );

    // The first call goes on, then ends with OK when its client half-closes.
    tx.send(note(b, "b3")).await.unwrap();
    assert_eq!(replies(&mut inbound, 3).await, ["b1", "b2", "b3"]);
    drop(tx);
    assert!(inbound.message().await.unwrap().is_none());
}

#[tokio::test]
async fn route_chat_with_everything_sent_first() {
    let server = start();
    let mut rg = client(&server).await;
    let notes = vec![
        note(point(5, 5), "first"),
        note(point(5, 5), "second"),
        RouteNote {
            location: None,
            message: "nowhere".into(),
        },
        note(point(0, 0), "origin"),
    ];
    let mut inbound = rg
        .route_chat(tokio_stream::iter(notes))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(n) = inbound.message().await.unwrap() {
        got.push(n.message);
    }
    // A note without a location is filed under (0, 0).
    assert_eq!(
        got,
        ["first", "first", "second", "nowhere", "nowhere", "origin"]
    );
}
