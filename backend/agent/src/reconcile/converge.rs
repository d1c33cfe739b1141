//! One jail's way from what the node has to what its row asks for, and what counts as settled.

use super::*;

/// Whether the agent has converged the jail's current generation to what is wanted.
pub(super) fn settled(j: &Jail) -> bool {
    j.observed_generation >= j.generation
        && match (j.desired_state, j.observed_state) {
            (DesiredState::Running, ObservedState::Running)
            | (DesiredState::Stopped, ObservedState::Stopped)
            | (DesiredState::Deleted, ObservedState::Deleted) => true,
            // An app jail whose command has ended stays stopped.
            (DesiredState::Running, ObservedState::Stopped) => j.kind == JailKind::App,
            _ => false,
        }
}

/// Whether converging the claimed jail will start it (its row says so
/// until the start is done): what the Running arm below starts.
pub(super) fn starts(j: &Jail) -> bool {
    let converged = j.generation == j.observed_generation;
    j.desired_state == DesiredState::Running
        && match j.observed_state {
            ObservedState::Pending | ObservedState::Starting => true,
            ObservedState::Stopped => !converged || j.kind == JailKind::System,
            // A retry of a failed step stays "failed" until it works: each
            // retry is not news to subscribers.
            ObservedState::Failed => !converged,
            ObservedState::Running | ObservedState::CrashLooping | ObservedState::Deleted => false,
        }
}

pub(super) fn count(by_state: &mut [u64; crate::metrics::STATES], s: ObservedState) {
    let i = ObservedState::ALL.iter().position(|x| *x == s).unwrap_or(0);
    by_state[i] += 1;
}

fn spec_of(jail: &Jail) -> JailSpec {
    JailSpec {
        name: jail.host_name(),
        hostname: jail.name.clone(),
        image: jail.image.clone(),
        kind: jail.kind,
        command: jail.command.clone(),
        limits: jail.limits,
        network: jail
            .address
            .as_deref()
            .and_then(|a| a.parse().ok())
            .map(|address| stockade_jail::NetSpec {
                address,
                publish: jail.published.clone(),
                nat: jail.outbound_nat,
            }),
        user_namespace: jail.user_namespace,
        env: jail
            .env
            .iter()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect(),
    }
}

/// Brings one jail to its desired state with idempotent engine steps.
/// Returns `Ok(None)` when nothing had to change and nothing is to record.
/// What was found changed by hand and put back goes to `repaired`.
///
/// `run` starts as the row's and leaves with what to record: a command that
/// ended on its own is counted, and a system jail's restarts after exits
/// in a row are paused ([`crash_pause`]); `run.retry_at` then says when.
pub(super) fn converge(
    engine: &Engine,
    jail: &Jail,
    full: bool,
    grace: Duration,
    repaired: &mut Vec<String>,
    run: &mut RunState,
    staged: Option<Result<(std::path::PathBuf, Option<u32>), String>>,
) -> Result<Option<ObservedState>, (ObservedState, String)> {
    let name = jail.host_name();
    let fail =
        |step: &str, e: stockade_jail::JailError| (ObservedState::Failed, format!("{step}: {e}"));
    let converged = jail.generation == jail.observed_generation;
    let now = Utc::now();
    if !converged {
        // What a user changed deserves a fresh try.
        run.crash_count = 0;
        run.retry_at = None;
    }
    if jail.desired_state != DesiredState::Running {
        run.started_at = None;
        run.retry_at = None;
    }
    if jail.restore_generation > jail.observed_generation
        && jail.desired_state != DesiredState::Deleted
    {
        // Asked for once: stopped, its volume put back whole, then brought
        // to what its row wants below (started again if it ran). A restore
        // that fails leaves the volume as it was, and is not tried again.
        if let Some(snapshot) = jail.restore_snapshot_id {
            engine.stop(&name, grace).map_err(|e| fail("stopping", e))?;
            engine
                .restore_snapshot(&name, &snapshot.to_string())
                .map_err(|e| fail("restoring the snapshot", e))?;
            run.started_at = None;
        } else if let Some(staged) = staged {
            let (image, uid_base) = staged
                .map_err(|e| (ObservedState::Failed, format!("restoring the backup: {e}")))?;
            // A new jail has nothing yet to stop: it is made first.
            engine
                .create(&spec_of(jail))
                .map_err(|e| fail("creating", e))?;
            engine.stop(&name, grace).map_err(|e| fail("stopping", e))?;
            engine
                .install_volume(&name, &image, uid_base)
                .map_err(|e| fail("restoring the backup", e))?;
            run.started_at = None;
        }
    }
    match jail.desired_state {
        DesiredState::Deleted => {
            if converged && jail.observed_state == ObservedState::Deleted {
                return Ok(None);
            }
            engine.destroy(&name).map_err(|e| fail("destroying", e))?;
            Ok(Some(ObservedState::Deleted))
        }
        DesiredState::Stopped => {
            let status = engine
                .status(&name)
                .map_err(|e| fail("reading status", e))?;
            if converged
                && jail.observed_state == ObservedState::Stopped
                && status == Some(JailStatus::Stopped)
                && !full
            {
                return Ok(None);
            }
            engine
                .create(&spec_of(jail))
                .map_err(|e| fail("creating", e))?;
            engine.stop(&name, grace).map_err(|e| fail("stopping", e))?;
            engine
                .update_limits(&name, &jail.limits)
                .map_err(|e| fail("applying limits", e))?;
            Ok(Some(ObservedState::Stopped))
        }
        DesiredState::Running => {
            let status = engine
                .status(&name)
                .map_err(|e| fail("reading status", e))?;
            let is_running = matches!(status, Some(JailStatus::Running { .. }));
            if is_running {
                if converged && jail.observed_state == ObservedState::Running && !full {
                    return Ok(None);
                }
                if run.started_at.is_none() {
                    // Running since before its starts were recorded.
                    run.started_at = Some(now);
                }
                if jail.restart_generation > jail.observed_generation {
                    // What applies only at a start (a plan's user namespace).
                    engine
                        .create(&spec_of(jail))
                        .map_err(|e| fail("creating", e))?;
                    // Stopped, then the limits (a volume the host would
                    // not grow while mounted grows now), then started.
                    engine.stop(&name, grace).map_err(|e| fail("stopping", e))?;
                    engine
                        .update_limits(&name, &jail.limits)
                        .map_err(|e| fail("applying limits", e))?;
                    engine.start(&name).map_err(|e| fail("starting", e))?;
                    run.started_at = Some(now);
                    return Ok(Some(ObservedState::Running));
                }
                if !converged {
                    // Published ports and outbound NAT change live.
                    engine
                        .create(&spec_of(jail))
                        .map_err(|e| (ObservedState::Running, format!("publishing: {e}")))?;
                }
                // Live limits; also sets back a limit changed by hand. A
                // volume the host will not grow while mounted grows at the
                // next stop: the jail runs meanwhile, and says so.
                let changed = match engine.update_limits(&name, &jail.limits) {
                    Ok(changed) => changed,
                    Err(e @ stockade_jail::JailError::GrowsAtNextStop { .. }) => {
                        return Err((ObservedState::Running, e.to_string()));
                    }
                    Err(e) => return Err(fail("applying limits", e)),
                };
                // Its link, address, route and rates; a jail whose link
                // cannot be put back runs on, and says why.
                let relinked = engine.repair_jail(&name).map_err(|e| {
                    (
                        ObservedState::Running,
                        format!("repairing its network: {e}"),
                    )
                })?;
                if converged {
                    // Unchanged limits that differed were changed by hand.
                    repaired.extend(changed.into_iter().map(|file| format!("limit {file}")));
                    repaired.extend(relinked);
                }
                return Ok(Some(running_state(run, now)));
            }
            // How its command ended, if it did on its own since last seen.
            let exit = engine
                .last_exit(&name)
                .map_err(|e| fail("reading status", e))?
                .map(|e| LastExit {
                    code: e.code,
                    signal: e.signal,
                    at: i64::try_from(e.at_ms)
                        .ok()
                        .and_then(DateTime::from_timestamp_millis)
                        .unwrap_or(now),
                })
                .filter(|e| run.last_exit.is_none_or(|seen| seen.at != e.at));
            let was_up = converged
                && matches!(
                    jail.observed_state,
                    ObservedState::Running | ObservedState::CrashLooping
                );
            // An app jail whose command ended after running this generation
            // has done its job: it is stopped, not restarted.
            if jail.kind == JailKind::App
                && converged
                && !matches!(
                    jail.observed_state,
                    ObservedState::Pending | ObservedState::Failed | ObservedState::Starting
                )
            {
                if exit.is_some() {
                    run.last_exit = exit;
                }
                run.started_at = None;
                return Ok(
                    if jail.observed_state == ObservedState::Stopped && exit.is_none() {
                        None
                    } else {
                        Some(ObservedState::Stopped)
                    },
                );
            }
            if was_up {
                // A system jail's command ended on its own.
                if exit.is_some() || jail.observed_state == ObservedState::Running {
                    let ended = exit.unwrap_or(LastExit {
                        code: None,
                        signal: None,
                        at: now,
                    });
                    let lasted = run
                        .started_at
                        .map_or(STABLE_RUN, |s| (ended.at - s).to_std().unwrap_or_default());
                    run.crash_count = if lasted >= STABLE_RUN {
                        1
                    } else {
                        run.crash_count.saturating_add(1)
                    };
                    run.last_exit = Some(ended);
                    run.started_at = None;
                    run.retry_at = chrono::Duration::from_std(crash_pause(run.crash_count))
                        .ok()
                        .map(|pause| ended.at + pause);
                }
                if run.retry_at.is_some_and(|at| at > now) {
                    return Ok(Some(ObservedState::CrashLooping));
                }
                run.restart_count = run.restart_count.saturating_add(1);
            }
            engine
                .create(&spec_of(jail))
                .map_err(|e| fail("creating", e))?;
            engine
                .update_limits(&name, &jail.limits)
                .map_err(|e| fail("applying limits", e))?;
            engine.start(&name).map_err(|e| fail("starting", e))?;
            run.started_at = Some(now);
            run.retry_at = None;
            Ok(Some(running_state(run, now)))
        }
    }
}

/// A run that lasted this long was no crash: the pauses start over.
pub(super) const STABLE_RUN: Duration = Duration::from_secs(60);
/// The longest pause before a crash-looping jail is started again.
const MAX_CRASH_PAUSE: Duration = Duration::from_secs(300);

/// The pause before a jail whose command ended `crashes` times in a row
/// (each soon after its start) is started again: none after the first
/// (a single crash is restarted at once), then one second, doubling.
pub(super) fn crash_pause(crashes: u32) -> Duration {
    match crashes {
        0 | 1 => Duration::ZERO,
        n => Duration::from_secs(1)
            .saturating_mul(1u32 << (n - 2).min(16))
            .min(MAX_CRASH_PAUSE),
    }
}

/// A running jail is crash-looping while its last exits came in a row and
/// this run has not yet lasted [`STABLE_RUN`]; once it has, it is running
/// and the pauses start over.
fn running_state(run: &mut RunState, now: DateTime<Utc>) -> ObservedState {
    let stable = run
        .started_at
        .is_none_or(|s| (now - s).to_std().unwrap_or_default() >= STABLE_RUN);
    if stable {
        run.crash_count = 0;
    }
    if run.crash_count >= 2 {
        ObservedState::CrashLooping
    } else {
        ObservedState::Running
    }
}

/// When a jail recorded in `observed` with `run` wants the agent back
/// without being asked: the end of a crash-looping jail's pause, or the
/// moment its run has lasted long enough to be called running.
pub(super) fn due_again(observed: ObservedState, run: &RunState) -> Option<DateTime<Utc>> {
    if observed != ObservedState::CrashLooping {
        return None;
    }
    run.retry_at.or_else(|| {
        run.started_at
            .and_then(|s| chrono::Duration::from_std(STABLE_RUN).ok().map(|d| s + d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_from_the_second_crash_and_are_capped() {
        assert_eq!(crash_pause(1), Duration::ZERO);
        assert_eq!(crash_pause(2), Duration::from_secs(1));
        assert_eq!(crash_pause(3), Duration::from_secs(2));
        assert_eq!(crash_pause(6), Duration::from_secs(16));
        assert_eq!(crash_pause(40), MAX_CRASH_PAUSE);
    }

    #[test]
    fn a_run_that_lasts_ends_the_crash_loop() {
        let now = Utc::now();
        let mut run = RunState {
            crash_count: 3,
            started_at: Some(now - chrono::Duration::seconds(5)),
            ..RunState::default()
        };
        assert_eq!(running_state(&mut run, now), ObservedState::CrashLooping);
        assert_eq!(run.crash_count, 3);
        assert!(due_again(ObservedState::CrashLooping, &run).is_some_and(|t| t > now));
        run.started_at = Some(now - chrono::Duration::seconds(61));
        assert_eq!(running_state(&mut run, now), ObservedState::Running);
        assert_eq!(run.crash_count, 0);
        assert_eq!(due_again(ObservedState::Running, &run), None);
    }
}
