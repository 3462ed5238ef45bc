//! `routeguide.RouteGuide`, the service of the gRPC tutorials, behaving like grpc-go's
//! `examples/route_guide` server, over a feature database generated here ([`features`]).
//!
//! | method | behaviour |
//! |---|---|
//! | `GetFeature` | the database entry at exactly that point, else `Feature { name: "", location: point }` |
//! | `ListFeatures` | every database entry inside the rectangle (corners in any order, edges included), in database order |
//! | `RecordRoute` | after the client half-closes: points received, how many of them are database entries, the sum of the [`distance`]s between consecutive points, whole seconds elapsed |
//! | `RouteChat` | for each note: records it under its location, then sends every note recorded at that location so far, oldest first, the new one last |
//!
//! As in grpc-go, the notes of `RouteChat` are shared by all calls of one server process (a
//! second client sees the first one's notes) and are never forgotten; database entries with an
//! empty name count as features in `RecordRoute` and are listed by `ListFeatures`. A missing
//! `location` is the point (0, 0).

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::pb::routeguide::route_guide_server::RouteGuide;
use super::pb::routeguide::{Feature, Point, Rectangle, RouteNote, RouteSummary};

/// Entries in the generated database.
pub const FEATURE_COUNT: usize = 64;

/// The feature database: [`FEATURE_COUNT`] entries on an 8 x 8 grid over roughly 40.0-41.75 N,
/// 75.0-74.125 W, each moved off its grid node by a few hundred metres (a deterministic
/// function of its index). Every fifth entry (index 4, 9, ...) has an empty name, like the
/// unnamed places of the tutorial's database; the others are named
/// `"Feature {i}, row {r}, column {c}"`. Same output on every call.
pub fn features() -> Vec<Feature> {
    (0..FEATURE_COUNT as i32)
        .map(|i| {
            let (row, col) = (i / 8, i % 8);
            let location = Point {
                latitude: 400_000_000 + row * 2_500_000 + (i * 7_919) % 40_000,
                longitude: -750_000_000 + col * 1_250_000 + (i * 104_729) % 40_000,
            };
            let name = if i % 5 == 4 {
                String::new()
            } else {
                format!("Feature {i}, row {row}, column {col}")
            };
            Feature {
                name,
                location: Some(location),
            }
        })
        .collect()
}

/// Metres between two points along a great circle of a sphere of radius 6,371,000 m
/// (haversine formula), truncated to an integer, as grpc-go's example computes it.
pub fn distance(from: &Point, to: &Point) -> i32 {
    const EARTH_RADIUS_M: f64 = 6_371_000.0;
    let rad = |e7: i32| (f64::from(e7) / 1e7).to_radians();
    let (lat1, lat2) = (rad(from.latitude), rad(to.latitude));
    let dlat = lat2 - lat1;
    let dlng = rad(to.longitude) - rad(from.longitude);
    let a = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlng / 2.0).sin().powi(2);
    let c = 2.0 * a.sqrt().atan2((1.0 - a).sqrt());
    (EARTH_RADIUS_M * c) as i32
}

/// Whether `point` lies inside `rect` (edges included; the corners may come in any order).
pub fn in_rectangle(point: &Point, rect: &Rectangle) -> bool {
    let lo = rect.lo.unwrap_or_default();
    let hi = rect.hi.unwrap_or_default();
    let (south, north) = min_max(lo.latitude, hi.latitude);
    let (west, east) = min_max(lo.longitude, hi.longitude);
    (south..=north).contains(&point.latitude) && (west..=east).contains(&point.longitude)
}

fn min_max(a: i32, b: i32) -> (i32, i32) {
    (a.min(b), a.max(b))
}

/// A location as a map key.
fn key(point: Option<&Point>) -> (i32, i32) {
    point.map_or((0, 0), |p| (p.latitude, p.longitude))
}

/// Notes by location, shared by all `RouteChat` calls of a server.
type Notes = Arc<Mutex<HashMap<(i32, i32), Vec<RouteNote>>>>;

/// `routeguide.RouteGuide` (see the module docs).
#[derive(Debug, Clone)]
pub struct RouteGuideService {
    features: Arc<Vec<Feature>>,
    notes: Notes,
}

impl Default for RouteGuideService {
    fn default() -> RouteGuideService {
        RouteGuideService::new()
    }
}

impl RouteGuideService {
    /// A service over [`features`], with no notes yet.
    pub fn new() -> RouteGuideService {
        RouteGuideService {
            features: Arc::new(features()),
            notes: Notes::default(),
        }
    }

    fn is_feature(&self, point: &Point) -> bool {
        self.features
            .iter()
            .any(|f| f.location.as_ref() == Some(point))
    }
}

#[tonic::async_trait]
impl RouteGuide for RouteGuideService {
    async fn get_feature(&self, request: Request<Point>) -> Result<Response<Feature>, Status> {
        let point = request.into_inner();
        let found = self
            .features
            .iter()
            .find(|f| f.location.as_ref() == Some(&point));
        Ok(Response::new(found.cloned().unwrap_or(Feature {
            name: String::new(),
            location: Some(point),
        })))
    }

    type ListFeaturesStream = tokio_stream::Iter<std::vec::IntoIter<Result<Feature, Status>>>;

    async fn list_features(
        &self,
        request: Request<Rectangle>,
    ) -> Result<Response<Self::ListFeaturesStream>, Status> {
        let rect = request.into_inner();
        let inside: Vec<Result<Feature, Status>> = self
            .features
            .iter()
            .filter(|f| in_rectangle(&f.location.unwrap_or_default(), &rect))
            .cloned()
            .map(Ok)
            .collect();
        Ok(Response::new(tokio_stream::iter(inside)))
    }

    async fn record_route(
        &self,
        request: Request<Streaming<Point>>,
    ) -> Result<Response<RouteSummary>, Status> {
        let started = Instant::now();
        let mut points = request.into_inner();
        let mut summary = RouteSummary::default();
        let mut last: Option<Point> = None;
        while let Some(point) = points.message().await? {
            summary.point_count += 1;
            if self.is_feature(&point) {
                summary.feature_count += 1;
            }
            if let Some(last) = &last {
                summary.distance = summary.distance.wrapping_add(distance(last, &point));
            }
            last = Some(point);
        }
        summary.elapsed_time = i32::try_from(started.elapsed().as_secs()).unwrap_or(i32::MAX);
        Ok(Response::new(summary))
    }

    type RouteChatStream = Chat;

    async fn route_chat(
        &self,
        request: Request<Streaming<RouteNote>>,
    ) -> Result<Response<Chat>, Status> {
        Ok(Response::new(Chat {
            inbound: request.into_inner(),
            notes: Arc::clone(&self.notes),
            pending: VecDeque::new(),
        }))
    }
}

/// The reply stream of `RouteChat`: the notes owed for the last note received, then the next
/// note; ends when the client half-closes (or with its stream's error).
#[derive(Debug)]
pub struct Chat {
    inbound: Streaming<RouteNote>,
    notes: Notes,
    pending: VecDeque<RouteNote>,
}

impl Stream for Chat {
    type Item = Result<RouteNote, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(note) = this.pending.pop_front() {
            return Poll::Ready(Some(Ok(note)));
        }
        match Pin::new(&mut this.inbound).poll_next(cx) {
            Poll::Ready(Some(Ok(note))) => {
                let mut notes = this.notes.lock().unwrap_or_else(|e| e.into_inner());
                let here = notes.entry(key(note.location.as_ref())).or_default();
                here.push(note);
                // Copied under the lock, sent after it: other calls are never blocked on us.
                this.pending.extend(here.iter().cloned());
                drop(notes);
                Poll::Ready(this.pending.pop_front().map(Ok))
            }
            other => other,
        }
    }
}
