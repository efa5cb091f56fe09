//! One message's turn: read it and its state, group its pending recipients by route, sign
//! it, attempt each group at its destination (within the destination's and the global
//! concurrency), record every recipient's outcome, reschedule it, hand a bounce's RFC 3464
//! DSN back to the store, and remove the message once nothing is owed.
//!
//! Not here: choosing which messages get a turn (`manager`), the SMTP conversation
//! (`crate::delivery::attempt`).

use std::collections::HashMap;
use std::fs;
use std::io::{self};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// How long a turn waits for its other groups before saving what one finished group did.
const GROUP_SAVE_GRACE: Duration = Duration::from_millis(200);

use crate::config::{RouteConfig, RouteHosts, RouteTlsConfig};

use crate::clock::Clock;
use crate::delivery::attempt::{GroupResult, Transport, defer_all};
use crate::delivery::client::RecipientOutcome;
use crate::delivery::dsn::{BounceReport, FailedRecipient, build_dsn};
use crate::delivery::metrics::DeliveryMetrics;
use crate::delivery::pool::HostPool;
use crate::delivery::retry::{RetryDecision, RetrySchedule};
use crate::delivery::route::{RouteChoice, group_by_table, resolve_choice};

use crate::envelope::Envelope;

use super::shared::{DestinationSlot, QueueEntry, RouteSet, RunReport, Shared, destination_of};
use super::state::{
    DsnEntry, MessageState, RecipientState, from_unix, hold_name, load_state, save_state,
    state_name, unix, valid_queue_id,
};
use super::store::MessageStore;

pub(super) struct Inner<S: MessageStore> {
    pub(super) store: Arc<S>,
    pub(super) routes: RwLock<Arc<RouteSet>>,
    pub(super) schedule: RetrySchedule,
    pub(super) concurrency: Arc<Semaphore>,
    pub(super) messages_in_flight: Arc<Semaphore>,
    pub(super) attempt_timeout: Duration,
    pub(super) idle_sweep: Duration,
    pub(super) hostname: String,
    pub(super) state_dir: PathBuf,
    /// States this process could not save (a full disk): authoritative over the state
    /// files until a save succeeds, so a recipient seen delivered is never sent the
    /// message again by this process.
    pub(super) unsaved: Mutex<HashMap<String, MessageState>>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) transport: Transport,
    /// Host health per configured route, by route name (direct MX delivery has no pool).
    pub(super) pools: Mutex<HashMap<String, (RouteHosts, HostPool)>>,
    pub(super) rng: Mutex<StdRng>,
    pub(super) metrics: DeliveryMetrics,
    /// Where owed archive copies go and who hears of a failed one (the config in force);
    /// `None` when the organization stopped archiving (copies owed still go, sent by the
    /// last postmaster known).
    pub(super) archive: RwLock<Option<crate::config::ArchiveConfig>>,
    /// DKIM keys; messages are signed before each attempt.
    pub(super) dkim: crate::delivery::dkim::Dkim,
    pub(super) shared: Arc<Shared>,
    pub(super) run_lock: tokio::sync::Mutex<()>,
    /// When the oldest message's age was last worked out (it takes a pass over the queue).
    pub(super) age_at: Mutex<Option<SystemTime>>,
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(e.to_string()))?
}

impl<S: MessageStore> Inner<S> {
    /// One attempt at one message, holding one of the held-message places; marks the
    /// message free to be started again when it ends.
    pub(super) async fn attempt(
        self: Arc<Self>,
        queue_id: String,
        reserved: Vec<DestinationSlot>,
        wait: bool,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> RunReport {
        struct Done<'a>(&'a Shared, &'a str);
        impl Drop for Done<'_> {
            // Also when the task is cancelled: the message must not stay "in flight".
            fn drop(&mut self) {
                if let Some(e) = self.0.entries().get_mut(self.1) {
                    e.in_flight = false;
                }
                // Due again at once when its destination was full.
                self.0.nominate(self.1);
            }
        }
        let shared = self.shared.clone();
        let _done = Done(&shared, &queue_id);
        let report = self.clone().process(queue_id.clone(), reserved, wait).await;
        drop(permit);
        report
    }

    /// Queue depth, every time; the oldest message's age, which takes a pass over the
    /// whole queue, at most once a second (by the manager's clock) or when the queue
    /// empties. The loop calls this on every wake: with a deep queue a pass per wake made
    /// delivery slower the more mail waited.
    pub(super) fn update_gauges(&self) {
        let now = self.clock.now();
        let entries = self.shared.entries();
        self.metrics.queue_depth.set(entries.len() as i64);
        {
            let mut at = self.age_at.lock().unwrap_or_else(|e| e.into_inner());
            let fresh = at.is_some_and(|t| {
                now.duration_since(t)
                    .is_ok_and(|d| d < Duration::from_secs(1))
            });
            if fresh && !entries.is_empty() {
                return;
            }
            *at = Some(now);
        }
        let age_of = |t: Option<SystemTime>| {
            t.and_then(|t| now.duration_since(t).ok())
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        };
        let oldest = entries.values().filter_map(|e| e.received_at).min();
        self.metrics.oldest_message_age_seconds.set(age_of(oldest));
        let archive: Vec<SystemTime> = entries.values().filter_map(|e| e.archive_since).collect();
        self.metrics.archive_pending.set(archive.len() as i64);
        self.metrics
            .archive_oldest_age_seconds
            .set(age_of(archive.iter().min().copied()));
    }

    pub(super) fn reschedule(
        &self,
        queue_id: &str,
        next: SystemTime,
        received_at: Option<SystemTime>,
    ) {
        if let Some(e) = self.shared.entries().get_mut(queue_id) {
            e.next_attempt = next;
            if received_at.is_some() {
                e.received_at = received_at;
            }
        }
    }

    pub(super) fn set_destinations(&self, queue_id: &str, destinations: Vec<String>) {
        if let Some(e) = self.shared.entries().get_mut(queue_id) {
            e.destinations = destinations;
        }
    }

    pub(super) fn forget(&self, queue_id: &str) {
        self.shared.entries().remove(queue_id);
        self.unsaved().remove(queue_id);
    }

    pub(super) fn unsaved(&self) -> std::sync::MutexGuard<'_, HashMap<String, MessageState>> {
        self.unsaved.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Saves a message's state file (fsync'd) on a blocking thread, so the flush never
    /// stalls the runtime threads that serve SMTP sessions. A state that cannot be saved
    /// is kept in memory (see [`Inner::unsaved`]), counted and logged; the next turn of
    /// the message saves it again.
    pub(super) async fn persist(&self, queue_id: &str, state: &MessageState) -> bool {
        let dir = self.state_dir.clone();
        let id = queue_id.to_string();
        let saved = state.clone();
        match blocking(move || save_state(&dir, &id, &saved)).await {
            Ok(()) => {
                self.unsaved().remove(queue_id);
                true
            }
            Err(e) => {
                self.metrics.state_save_failures.inc();
                tracing::error!(
                    queue_id,
                    "cannot save delivery state (kept in memory; recipients already delivered will not be sent it again by this process): {e}"
                );
                self.unsaved().insert(queue_id.to_string(), state.clone());
                false
            }
        }
    }

    /// One attempt at one message. `reserved` are destination slots taken for it already;
    /// with `wait`, a group waits for a slot of its destination, otherwise a group whose
    /// destination is full is left pending for when it has room.
    pub(super) async fn process(
        self: Arc<Self>,
        queue_id: String,
        reserved: Vec<DestinationSlot>,
        wait: bool,
    ) -> RunReport {
        let mut report = RunReport {
            messages: 1,
            ..RunReport::default()
        };
        let now = self.clock.now();
        let retry_soon = now + Duration::from_secs(60);
        if !valid_queue_id(&queue_id) {
            tracing::error!(
                queue_id,
                "queue id is not usable as a file name; message skipped"
            );
            self.forget(&queue_id);
            return report;
        }
        let store = self.store.clone();
        let id = queue_id.clone();
        let dir = self.state_dir.clone();
        let read = blocking(move || Ok((store.read(&id)?, load_state(&dir, &id)))).await;
        let (message, saved) = match read {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(&queue_id);
                return report;
            }
            Err(e) => {
                tracing::error!(queue_id, "cannot read message: {e}");
                self.reschedule(&queue_id, retry_soon, None);
                return report;
            }
        };
        let envelope = message.envelope;
        let text = message.text;
        // The header section (bounded) is all that is read before the text is sent: for
        // the loop guard (SPEC §3.5: too many `Received:` headers bounces without
        // delivery) and for a DSN.
        let headers = match text.header_section().await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(queue_id, "cannot read message: {e}");
                self.reschedule(&queue_id, retry_soon, None);
                return report;
            }
        };
        let looping = self.transport.loop_refusal(&headers);
        // DKIM (SPEC §2.1): signed from the stored text before each attempt; a key that
        // cannot be used defers the message rather than sending it unsigned.
        let (text, unsigned) = if looping.is_some() {
            (text, None)
        } else {
            match self.dkim.sign(&headers, &text).await {
                Ok(crate::delivery::dkim::Signing::Signed(signed)) => (signed, None),
                Ok(crate::delivery::dkim::Signing::NotConfigured) => (text, None),
                Err(e) => {
                    tracing::warn!(queue_id, domain = %e.domain, "DKIM signing failed, delivery deferred: {}", e.reason);
                    (text, Some(e.to_string()))
                }
            }
        };
        // A state file exists only for a message that needed more than one attempt or
        // route group; it is removed with the message.
        // A state this process could not save is newer than any file.
        let unsaved = self.unsaved().get(&queue_id).cloned();
        let mut state_on_disk = unsaved.is_some() || !matches!(saved, Ok(None));
        let mut state = match (unsaved, saved) {
            (Some(s), _) => s,
            (None, Ok(Some(s))) => s,
            (None, Ok(None)) => MessageState::new(&envelope, now),
            (None, Err(e)) => {
                // An unreadable state file: start over (at-least-once, never lost).
                tracing::warn!(queue_id, "delivery state unreadable, starting over: {e}");
                MessageState::new(&envelope, now)
            }
        };

        // A held message is started only for its archive copy (quarantined mail of an
        // organization that archives what filters keep back).
        let held = self.shared.entries().get(&queue_id).is_some_and(|e| e.held);
        let pending = if held { Vec::new() } else { state.pending() };
        let route_set = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let routes = &route_set.list;
        let mut groups = JoinSet::new();
        let mut route_groups: Vec<(RouteChoice, Vec<String>, Part)> =
            group_by_table(&route_set.table, &envelope.mail_from, &pending)
                .into_iter()
                .map(|(choice, rcpts)| (choice, rcpts, Part::Recipients))
                .collect();
        // The archive copy, when its time has come (or nothing else is left to try): a
        // group of its own, with its own sender and the journal headers above the text.
        let archive_config = self
            .archive
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let archive_due = state
            .archive_pending()
            .filter(|a| pending.is_empty() || a.next_attempt_unix <= unix(now))
            .map(|a| a.address.clone());
        let mut archive_missing_route = None;
        if let Some(address) = archive_due {
            let postmaster = archive_config
                .as_ref()
                .map(|a| a.postmaster.clone())
                .unwrap_or_default();
            let named = archive_config
                .as_ref()
                .filter(|a| a.address == address)
                .and_then(|a| a.route.clone());
            let choice = match named {
                Some(name) => match routes.iter().position(|r| r.name == name) {
                    Some(i) => Some(RouteChoice::Configured(i)),
                    None => {
                        archive_missing_route = Some(name);
                        None
                    }
                },
                None => group_by_table(
                    &route_set.table,
                    &postmaster,
                    std::slice::from_ref(&address),
                )
                .into_iter()
                .next()
                .map(|(choice, _)| choice),
            };
            if let Some(choice) = choice {
                let journal = crate::delivery::journal::journal_headers(&envelope, &self.hostname);
                route_groups.push((
                    choice,
                    vec![address],
                    Part::Archive {
                        from: postmaster,
                        text: text.prepend(&journal),
                    },
                ));
            }
        }
        // With several route groups, each finished group is saved, so a restart does not
        // deliver it again; a single group needs no intermediate save.
        let save_each_group = route_groups.len() > 1;
        let mut reserved = reserved;
        // Destinations that were full: their recipients wait for a free slot.
        let mut busy: Vec<String> = Vec::new();
        let mut attempted = false;
        // Destinations an earlier group of this turn already goes to: a later group for one
        // of them (the archive copy beside the recipients' copy, on the same route) waits
        // for a slot rather than leaving the turn. Skipped, it would come back in a turn of
        // its own, reading and saving the message again, for every message while the
        // destination stays busy.
        let mut started: Vec<String> = Vec::new();
        for (choice, rcpts, part) in route_groups {
            let route = resolve_choice(routes, &choice);
            let destination = destination_of(&choice, &route.name);
            let shared_in_turn = started.contains(&destination);
            let slot = match reserved.iter().position(|s| s.key == destination) {
                Some(i) => Some(reserved.swap_remove(i)),
                None if wait || shared_in_turn => None,
                None => match DestinationSlot::try_take(&self.shared, &destination) {
                    Some(slot) => Some(slot),
                    None => {
                        busy.push(destination);
                        continue;
                    }
                },
            };
            started.push(destination.clone());
            let this = self.clone();
            // The archive copy goes whatever the loop guard or a DKIM key says: it is the
            // organization's own record, not mail leaving it.
            let (from, text, looping, unsigned, archive) = match part {
                Part::Recipients => (
                    envelope.mail_from.clone(),
                    text.clone(),
                    looping.clone(),
                    unsigned.clone(),
                    false,
                ),
                Part::Archive { from, text } => (from, text, None, None, true),
            };
            attempted = true;
            let params = envelope.mail_params();
            groups.spawn(async move {
                let _slot = match slot {
                    Some(slot) => slot,
                    None => DestinationSlot::take(&this.shared, &destination).await,
                };
                let _permit = this.concurrency.clone().acquire_owned().await;
                let hosts = this.host_order(&choice, &route);
                let started = std::time::Instant::now();
                let result = match (looping, unsigned) {
                    (Some(refusal), _) => GroupResult::refused(&rcpts, &refusal),
                    (None, Some(reason)) => GroupResult {
                        outcomes: defer_all(&rcpts, &reason),
                        host: None,
                        failed_hosts: Vec::new(),
                        succeeded_host: None,
                    },
                    (None, None) => {
                        let attempt = this
                            .transport
                            .deliver(&route, &hosts, &from, &rcpts, &text, params);
                        match tokio::time::timeout(this.attempt_timeout, attempt).await {
                            Ok(result) => result,
                            Err(_) => GroupResult {
                                outcomes: defer_all(
                                    &rcpts,
                                    &format!(
                                        "attempt timeout: route {} did not finish within {:?}",
                                        route.name, this.attempt_timeout
                                    ),
                                ),
                                host: None,
                                failed_hosts: Vec::new(),
                                succeeded_host: None,
                            },
                        }
                    }
                };
                this.metrics
                    .attempt_took(&route.name, started.elapsed().as_secs_f64());
                this.record_health(&choice, &route, &result);
                let tls = tls_policy(&route.tls);
                (
                    route.name.clone(),
                    metric_host(&choice, &result),
                    tls,
                    result,
                    archive,
                )
            });
        }
        // Slots taken for destinations this message no longer has.
        drop(reserved);

        // A finished group is saved only when another group of the turn is still out after
        // GROUP_SAVE_GRACE: groups that finish together (the recipients' copy and the
        // archive copy, typically) leave one save at the end of the turn, or none when
        // the message is done, instead of an fsync'd write per group.
        let mut unsaved_groups = false;
        loop {
            let done = if unsaved_groups {
                match tokio::time::timeout(GROUP_SAVE_GRACE, groups.join_next()).await {
                    Ok(done) => done,
                    Err(_) => {
                        state_on_disk |= self.persist(&queue_id, &state).await;
                        unsaved_groups = false;
                        continue;
                    }
                }
            } else {
                groups.join_next().await
            };
            let Some(done) = done else { break };
            let Ok((route_name, metric_host, tls, result, archive)) = done else {
                continue;
            };
            if archive {
                self.archive_result(&queue_id, &envelope, &mut state, &route_name, &result, now);
                unsaved_groups |= save_each_group;
                continue;
            }
            let in_queue = now
                .duration_since(envelope.received_at)
                .unwrap_or_default()
                .as_secs_f64();
            for (rcpt, outcome) in &result.outcomes {
                let host = result.host.as_deref();
                let new_state = match outcome {
                    RecipientOutcome::Delivered { reply } => {
                        tracing::info!(queue_id, sender = %envelope.mail_from, recipients = %rcpt, route = %route_name, host = host.unwrap_or("none"), tls, result = "delivered", %reply, "delivery");
                        report.delivered += 1;
                        self.metrics.count(&route_name, &metric_host, "delivered");
                        self.metrics.left_queue("delivered", in_queue);
                        RecipientState::Delivered {
                            host: host.unwrap_or("none").to_string(),
                        }
                    }
                    RecipientOutcome::Deferred { reason } => {
                        tracing::info!(queue_id, sender = %envelope.mail_from, recipients = %rcpt, route = %route_name, host = host.unwrap_or("none"), tls, result = "deferred", reply = %reason, "delivery");
                        report.deferred += 1;
                        self.metrics.count(&route_name, &metric_host, "deferred");
                        RecipientState::Pending {
                            last_error: Some(reason.clone()),
                        }
                    }
                    RecipientOutcome::Failed { status, diagnostic } => {
                        tracing::info!(queue_id, sender = %envelope.mail_from, recipients = %rcpt, route = %route_name, host = host.unwrap_or("none"), tls, result = "bounced", status = %status, reply = %diagnostic, "delivery");
                        report.bounced += 1;
                        self.metrics.count(&route_name, &metric_host, "bounced");
                        self.metrics.left_queue("bounced", in_queue);
                        if !envelope.mail_from.is_empty() {
                            state.dsn_pending.push(DsnEntry {
                                recipient: rcpt.clone(),
                                status: status.clone(),
                                diagnostic: diagnostic.clone(),
                                remote_mta: host.map(str::to_string),
                            });
                        }
                        RecipientState::Bounced {
                            status: status.clone(),
                            diagnostic: diagnostic.clone(),
                        }
                    }
                };
                state.recipients.insert(rcpt.clone(), new_state);
            }
            unsaved_groups |= save_each_group;
        }

        // Temporary failures: retry on the schedule, or bounce once the lifetime is over.
        // Recipients left for a full destination were not attempted: they do not count as
        // a failed attempt and are started again as soon as their destination has room.
        let still_pending = state.pending();
        let now = self.clock.now();
        let attempted_and_pending = !still_pending.is_empty() && report.deferred > 0;
        if !still_pending.is_empty() {
            if attempted_and_pending {
                state.attempts = state.attempts.saturating_add(1);
            }
            match self
                .schedule
                .decide(envelope.received_at, now, state.attempts.max(1))
            {
                RetryDecision::RetryAt(t) => {
                    state.next_attempt_unix = if busy.is_empty() { unix(t) } else { unix(now) };
                }
                RetryDecision::Expired => {
                    attempted = true;
                    for rcpt in still_pending {
                        let last = match state.recipients.get(&rcpt) {
                            Some(RecipientState::Pending {
                                last_error: Some(e),
                            }) => e.clone(),
                            _ => "no delivery attempt succeeded".to_string(),
                        };
                        let diagnostic = format!("delivery time expired; last error: {last}");
                        report.bounced += 1;
                        let route_name = match crate::envelope::domain_of(&rcpt) {
                            Some(d) => {
                                let sender = crate::envelope::domain_of(&envelope.mail_from);
                                let choice = route_set.table.choose_for(sender.as_deref(), &d);
                                resolve_choice(routes, &choice).name
                            }
                            None => "direct".to_string(),
                        };
                        tracing::info!(queue_id, sender = %envelope.mail_from, recipients = %rcpt, route = %route_name, host = "none", tls = "none", result = "bounced", status = "5.4.7", reply = %diagnostic, "delivery");
                        self.metrics.count(&route_name, "none", "bounced");
                        self.metrics.left_queue(
                            "bounced",
                            now.duration_since(envelope.received_at)
                                .unwrap_or_default()
                                .as_secs_f64(),
                        );
                        if !envelope.mail_from.is_empty() {
                            state.dsn_pending.push(DsnEntry {
                                recipient: rcpt.clone(),
                                status: "5.4.7".into(),
                                diagnostic: diagnostic.clone(),
                                remote_mta: None,
                            });
                        }
                        state.recipients.insert(
                            rcpt,
                            RecipientState::Bounced {
                                status: "5.4.7".into(),
                                diagnostic,
                            },
                        );
                    }
                }
            }
        }
        // Where the recipients still pending go, for the scheduler.
        let destinations = group_by_table(&route_set.table, &envelope.mail_from, &state.pending())
            .into_iter()
            .map(|(choice, _)| destination_of(&choice, &resolve_choice(routes, &choice).name))
            .collect();
        self.set_destinations(&queue_id, destinations);
        // A message finished in this attempt goes straight to removal: if the relay stops
        // before the removal, the next run delivers it again (at least once, never lost).
        if let Some(name) = archive_missing_route {
            self.archive_put_off(
                &queue_id,
                &envelope,
                &mut state,
                &format!("archive route {name} does not exist"),
                now,
            );
            attempted = true;
        }
        self.archive_expired(&queue_id, &envelope, &mut state, now);
        if held && state.archive_pending().is_none() {
            // Its copy is settled: the held message waits for its release alone.
            if let Some(e) = self.shared.entries().get_mut(&queue_id) {
                e.archive_while_held = false;
            }
        }
        self.note_archive(&queue_id, &state, envelope.received_at);
        let next_attempt = next_attempt_of(&state, held);
        let finished = state.finished();
        if !attempted && !finished && state.dsn_pending.is_empty() && !archive_report_due(&state) {
            // Nothing tried, nothing changed: only the time of the next try, which a
            // restart sets to "now" anyway. No disk write for a message that waits,
            // unless an earlier save failed: that is tried again.
            if self.unsaved().contains_key(&queue_id) {
                self.persist(&queue_id, &state).await;
            }
            self.reschedule(&queue_id, next_attempt, Some(envelope.received_at));
            return report;
        }
        if !finished {
            if !self.persist(&queue_id, &state).await {
                self.reschedule(&queue_id, retry_soon, Some(envelope.received_at));
                return report;
            }
            state_on_disk = true;
        }

        if !state.dsn_pending.is_empty() {
            match self
                .queue_dsn(&envelope, &headers, &state.dsn_pending, now)
                .await
            {
                Ok(dsn_id) => {
                    report.dsns_queued += 1;
                    state.dsn_pending.clear();
                    self.persist(&queue_id, &state).await;
                    self.shared
                        .entries()
                        .insert(dsn_id.clone(), QueueEntry::new(now, Some(now)));
                    self.shared.nominate(&dsn_id);
                }
                Err(e) => {
                    tracing::error!(queue_id, "cannot queue the bounce: {e}");
                    self.reschedule(&queue_id, retry_soon, Some(envelope.received_at));
                    return report;
                }
            }
        }
        if archive_report_due(&state) {
            match self
                .queue_archive_report(&envelope, &headers, &state, now)
                .await
            {
                Ok(Some(dsn_id)) => {
                    report.dsns_queued += 1;
                    if let Some(a) = state.archive.as_mut() {
                        a.report_pending = None;
                    }
                    self.persist(&queue_id, &state).await;
                    self.shared
                        .entries()
                        .insert(dsn_id.clone(), QueueEntry::new(now, Some(now)));
                    self.shared.nominate(&dsn_id);
                }
                Ok(None) => {
                    if let Some(a) = state.archive.as_mut() {
                        a.report_pending = None;
                    }
                }
                Err(e) => {
                    tracing::error!(
                        queue_id,
                        "cannot queue the report of a failed archive copy: {e}"
                    );
                    self.reschedule(&queue_id, retry_soon, Some(envelope.received_at));
                    return report;
                }
            }
        }
        if state.finished() {
            let store = self.store.clone();
            let id = queue_id.clone();
            match blocking(move || store.remove(&id)).await {
                Ok(()) => {
                    if state_on_disk {
                        let path = self.state_dir.join(state_name(&queue_id));
                        let _ = blocking(move || fs::remove_file(path)).await;
                    }
                    // Held while its last attempt was under way: no marker left behind.
                    let held = self.shared.entries().get(&queue_id).is_some_and(|e| e.held);
                    if held {
                        let hold = self.state_dir.join(hold_name(&queue_id));
                        let _ = blocking(move || fs::remove_file(hold)).await;
                    }
                    self.forget(&queue_id);
                    report.completed += 1;
                }
                Err(e) => {
                    tracing::error!(queue_id, "cannot remove delivered message: {e}");
                    self.reschedule(&queue_id, retry_soon, Some(envelope.received_at));
                }
            }
        } else {
            self.reschedule(&queue_id, next_attempt, Some(envelope.received_at));
        }
        report
    }

    /// Queues the DSN of `entries`; it quotes `headers`, the original's header section.
    pub(super) async fn queue_dsn(
        &self,
        envelope: &Envelope,
        headers: &[u8],
        entries: &[DsnEntry],
        now: SystemTime,
    ) -> io::Result<String> {
        self.queue_dsn_to(&envelope.mail_from, envelope, headers, entries, now)
            .await
    }

    /// Queues the DSN of `entries` to `to` (the sender, or the postmaster for an archive
    /// copy).
    pub(super) async fn queue_dsn_to(
        &self,
        to: &str,
        envelope: &Envelope,
        headers: &[u8],
        entries: &[DsnEntry],
        now: SystemTime,
    ) -> io::Result<String> {
        let failures: Vec<FailedRecipient> = entries
            .iter()
            .map(|e| FailedRecipient {
                recipient: e.recipient.clone(),
                status: e.status.clone(),
                diagnostic: e.diagnostic.clone(),
                remote_mta: e.remote_mta.clone(),
            })
            .collect();
        let dsn = build_dsn(&BounceReport {
            reporting_mta: &self.hostname,
            queue_id: &envelope.queue_id.to_string(),
            arrival: envelope.received_at,
            now,
            original_sender: &envelope.mail_from,
            failures: &failures,
            original: headers,
        });
        let store = self.store.clone();
        let to = vec![to.to_string()];
        blocking(move || store.enqueue("", &to, &dsn, now)).await
    }

    /// The order to try a group's hosts in: a configured route's pool by health and
    /// weight; for direct MX delivery the one domain (it has no pool to keep).
    pub(super) fn host_order(
        &self,
        choice: &RouteChoice,
        route: &RouteConfig,
    ) -> Vec<crate::config::HostConfig> {
        let now = self.clock.now();
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(choice, RouteChoice::DirectMx(_)) {
            return HostPool::from_route_hosts(&route.hosts).attempt_order(now, &mut *rng);
        }
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let entry = pools.entry(route.name.clone()).or_insert_with(|| {
            (
                route.hosts.clone(),
                HostPool::from_route_hosts(&route.hosts),
            )
        });
        if entry.0 != route.hosts {
            *entry = (
                route.hosts.clone(),
                HostPool::from_route_hosts(&route.hosts),
            );
        }
        entry.1.attempt_order(now, &mut *rng)
    }

    pub(super) fn record_health(
        &self,
        choice: &RouteChoice,
        route: &RouteConfig,
        result: &GroupResult,
    ) {
        if matches!(choice, RouteChoice::DirectMx(_)) {
            return;
        }
        let now = self.clock.now();
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, pool)) = pools.get_mut(&route.name) {
            for h in &result.failed_hosts {
                pool.mark_down(h, now);
            }
            if let Some(h) = &result.succeeded_host {
                pool.mark_up(h);
            }
        }
    }
}

/// The `host` label of a group's outcome: the configured pool host that took it (or the
/// last that failed), `mx` for direct delivery, `none` when no host was tried. Never an
/// MX or recipient domain, so the label set is bounded by the configuration.
/// The route's TLS policy as delivery events name it: `verified` (TLS required, chain and
/// host name checked), `required` (TLS required, certificate checks relaxed) or
/// `opportunistic` (STARTTLS when offered).
pub(super) fn tls_policy(tls: &RouteTlsConfig) -> &'static str {
    match (
        tls.require_tls,
        tls.require_ca_signed && tls.validate_hostname,
    ) {
        (true, true) => "verified",
        (true, false) => "required",
        (false, _) => "opportunistic",
    }
}

pub(super) fn metric_host(choice: &RouteChoice, result: &GroupResult) -> String {
    if matches!(choice, RouteChoice::DirectMx(_)) {
        return "mx".to_string();
    }
    match result
        .succeeded_host
        .as_ref()
        .or(result.failed_hosts.last())
    {
        Some(h) => format!("{}:{}", h.host, h.port),
        None => "none".to_string(),
    }
}

/// What a route group of a turn carries.
enum Part {
    /// Pending recipients of the message.
    Recipients,
    /// The archive copy: sent by `from` (the organization's postmaster), `text` with the
    /// journal headers above it.
    Archive {
        from: String,
        text: crate::delivery::text::MessageText,
    },
}

/// When the message is due next: its recipients' next try (unless held), or its archive
/// copy's, whichever comes first.
fn next_attempt_of(state: &MessageState, held: bool) -> SystemTime {
    let recipients = (!held && !state.pending().is_empty()).then_some(state.next_attempt_unix);
    let archive = state.archive_pending().map(|a| a.next_attempt_unix);
    let next = match (recipients, archive) {
        (Some(r), Some(a)) => r.min(a),
        (Some(r), None) => r,
        (None, Some(a)) => a,
        (None, None) => state.next_attempt_unix,
    };
    from_unix(next)
}

/// A failed archive copy whose report to the postmaster is not queued yet.
fn archive_report_due(state: &MessageState) -> bool {
    state
        .archive
        .as_ref()
        .is_some_and(|a| a.report_pending.is_some())
}

impl<S: MessageStore> Inner<S> {
    /// Records the outcome of an archive copy's attempt.
    fn archive_result(
        &self,
        queue_id: &str,
        envelope: &Envelope,
        state: &mut MessageState,
        route: &str,
        result: &GroupResult,
        now: SystemTime,
    ) {
        let Some(outcome) = result.outcomes.iter().map(|(_, o)| o).next() else {
            return;
        };
        let host = result.host.as_deref().unwrap_or("none");
        match outcome {
            RecipientOutcome::Delivered { reply } => {
                let Some(a) = state.archive.as_mut() else {
                    return;
                };
                tracing::info!(queue_id, archive = %a.address, route, host, result = "delivered", %reply, "archive copy");
                self.metrics.archive_delivered.inc();
                a.state = RecipientState::Delivered {
                    host: host.to_string(),
                };
            }
            RecipientOutcome::Deferred { reason } => {
                self.archive_put_off(queue_id, envelope, state, reason, now);
            }
            RecipientOutcome::Failed { status, diagnostic } => {
                self.archive_bounced(queue_id, state, status, diagnostic, Some(host), now);
            }
        }
    }

    /// The archive copy could not go now: retried on its own schedule (its own failed
    /// attempts, counted from the message's receipt), bounced once that lifetime is over.
    fn archive_put_off(
        &self,
        queue_id: &str,
        envelope: &Envelope,
        state: &mut MessageState,
        reason: &str,
        now: SystemTime,
    ) {
        let Some(a) = state.archive.as_mut() else {
            return;
        };
        tracing::info!(queue_id, archive = %a.address, result = "deferred", reply = %reason, "archive copy");
        self.metrics.archive_deferred.inc();
        a.attempts = a.attempts.saturating_add(1);
        a.state = RecipientState::Pending {
            last_error: Some(reason.to_string()),
        };
        match self.schedule.decide(envelope.received_at, now, a.attempts) {
            RetryDecision::RetryAt(t) => a.next_attempt_unix = unix(t),
            RetryDecision::Expired => {
                let diagnostic = format!("delivery time expired; last error: {reason}");
                self.archive_bounced(queue_id, state, "5.4.7", &diagnostic, None, now);
            }
        }
    }

    /// An archive copy still owed once the message's lifetime is over is bounced, whether
    /// or not it was tried this turn.
    fn archive_expired(
        &self,
        queue_id: &str,
        envelope: &Envelope,
        state: &mut MessageState,
        now: SystemTime,
    ) {
        let Some(a) = state.archive_pending() else {
            return;
        };
        if let RetryDecision::Expired =
            self.schedule
                .decide(envelope.received_at, now, a.attempts.max(1))
        {
            let last = match &a.state {
                RecipientState::Pending {
                    last_error: Some(e),
                } => e.clone(),
                _ => "no delivery attempt succeeded".to_string(),
            };
            let diagnostic = format!("delivery time expired; last error: {last}");
            self.archive_bounced(queue_id, state, "5.4.7", &diagnostic, None, now);
        }
    }

    /// The archive refused the copy for good: reported to the postmaster (never to the
    /// sender), counted.
    fn archive_bounced(
        &self,
        queue_id: &str,
        state: &mut MessageState,
        status: &str,
        diagnostic: &str,
        host: Option<&str>,
        _now: SystemTime,
    ) {
        let Some(a) = state.archive.as_mut() else {
            return;
        };
        tracing::warn!(queue_id, archive = %a.address, result = "bounced", status, reply = %diagnostic, "archive copy failed; reported to the postmaster");
        self.metrics.archive_failed.inc();
        a.state = RecipientState::Bounced {
            status: status.to_string(),
            diagnostic: diagnostic.to_string(),
        };
        a.report_pending = Some(DsnEntry {
            recipient: a.address.clone(),
            status: status.to_string(),
            diagnostic: diagnostic.to_string(),
            remote_mta: host.filter(|h| *h != "none").map(str::to_string),
        });
    }

    /// Keeps the scheduler's view of the message's owed archive copy current (for the
    /// `archive_pending` and `archive_oldest_age_seconds` gauges).
    fn note_archive(&self, queue_id: &str, state: &MessageState, received_at: SystemTime) {
        if let Some(e) = self.shared.entries().get_mut(queue_id) {
            e.archive_since = state.archive_pending().map(|_| received_at);
        }
    }

    /// Queues the report of a failed archive copy to the postmaster (from the null
    /// sender, quoting the message's header section); `None` when no postmaster is known.
    async fn queue_archive_report(
        &self,
        envelope: &Envelope,
        headers: &[u8],
        state: &MessageState,
        now: SystemTime,
    ) -> io::Result<Option<String>> {
        let Some(entry) = state
            .archive
            .as_ref()
            .and_then(|a| a.report_pending.clone())
        else {
            return Ok(None);
        };
        let postmaster = self
            .archive
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|a| a.postmaster.clone());
        let Some(postmaster) = postmaster.filter(|p| !p.is_empty()) else {
            tracing::error!(queue_id = %envelope.queue_id, "an archive copy failed and no postmaster is configured to tell");
            return Ok(None);
        };
        self.queue_dsn_to(&postmaster, envelope, headers, &[entry], now)
            .await
            .map(Some)
    }
}
