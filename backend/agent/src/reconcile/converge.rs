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

pub(super) fn count(by_state: &mut [u64; 5], s: ObservedState) {
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
    }
}

/// Brings one jail to its desired state with idempotent engine steps.
/// Returns `Ok(None)` when nothing had to change and nothing is to record.
/// What was found changed by hand and put back goes to `repaired`.
pub(super) fn converge(
    engine: &Engine,
    jail: &Jail,
    full: bool,
    grace: Duration,
    repaired: &mut Vec<String>,
) -> Result<Option<ObservedState>, (ObservedState, String)> {
    let name = jail.host_name();
    let fail =
        |step: &str, e: stockade_jail::JailError| (ObservedState::Failed, format!("{step}: {e}"));
    let converged = jail.generation == jail.observed_generation;
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
                return Ok(Some(ObservedState::Running));
            }
            // An app jail whose command ended after running this generation
            // has done its job: it is stopped, not restarted.
            if jail.kind == JailKind::App
                && converged
                && jail.observed_state != ObservedState::Pending
                && jail.observed_state != ObservedState::Failed
            {
                return Ok(if jail.observed_state == ObservedState::Stopped {
                    None
                } else {
                    Some(ObservedState::Stopped)
                });
            }
            engine
                .create(&spec_of(jail))
                .map_err(|e| fail("creating", e))?;
            engine
                .update_limits(&name, &jail.limits)
                .map_err(|e| fail("applying limits", e))?;
            engine.start(&name).map_err(|e| fail("starting", e))?;
            Ok(Some(ObservedState::Running))
        }
    }
}
