//! Tenant quotas and placement, through the store against a real database.

mod common;

use stockade_domain::{DesiredState, JailKind, JailName, Limits, TenantSlug};
use stockade_store::jails::{self, NewJail};
use stockade_store::nodes::{self, NodeInfo};
use stockade_store::plans::{self, PlanInput, Quota};
use stockade_store::{PgPool, StoreError, tenants};
use uuid::Uuid;

const MIB: u64 = 1 << 20;

async fn node(pool: &PgPool, name: &str, memory: u64) -> Uuid {
    nodes::register(
        pool,
        &NodeInfo {
            name: name.into(),
            cpus: 2,
            memory_bytes: memory,
            disk_bytes: 1 << 40,
            address_pool: None,
            agent_version: "test".into(),
            published_ports: stockade_store::nodes::DEFAULT_PUBLISHED_PORTS,
            cold_moves: "CRIU is not installed on this node".into(),
        },
    )
    .await
    .unwrap()
}

async fn tenant_with_room_for(pool: &PgPool, jails: u32) -> Uuid {
    let plan = plans::create(
        pool,
        &PlanInput {
            name: TenantSlug::parse(&format!("p{}", &Uuid::new_v4().simple().to_string()[..8]))
                .unwrap(),
            display_name: "Test".into(),
            quota: Quota {
                cpu_millicores: 100 * jails,
                memory_bytes: 64 * MIB * u64::from(jails),
                pids: 1000,
                disk_bytes: 1 << 40,
                max_jails: 1000,
                ..Quota::default()
            },
            user_namespace: true,
            network: plans::PlanNetwork::default(),
        },
    )
    .await
    .unwrap();
    let slug =
        TenantSlug::parse(&format!("t{}", &Uuid::new_v4().simple().to_string()[..8])).unwrap();
    tenants::create(pool, &slug, "Tenant", plan.id)
        .await
        .unwrap()
        .id
}

fn small_jail(name: &str) -> NewJail {
    NewJail {
        name: JailName::parse(name).unwrap(),
        image: "busybox".into(),
        kind: JailKind::System,
        command: vec![],
        limits: Limits {
            cpu_millicores: 100,
            memory_bytes: 64 * MIB,
            pids: 50,
            disk_bytes: 64 * MIB,
            ..Limits::default()
        },
    }
}

#[tokio::test]
async fn fifty_concurrent_creations_with_room_for_ten_make_exactly_ten() {
    let (pool, _) = common::fresh_database().await;
    node(&pool, "n1", 1 << 40).await;
    let tenant = tenant_with_room_for(&pool, 10).await;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                jails::create(&pool, tenant, &small_jail(&format!("j{i}"))).await
            })
        })
        .collect();
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::QuotaExceeded(msg)) => {
                assert!(msg.contains("quota exceeded"), "{msg}");
                refused += 1;
            }
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!((ok, refused), (10, 40));
    assert_eq!(
        jails::list_for_tenant(&pool, tenant).await.unwrap().len(),
        10
    );
}

#[tokio::test]
async fn quota_errors_say_what_is_left() {
    let (pool, _) = common::fresh_database().await;
    node(&pool, "n1", 1 << 40).await;
    let tenant = tenant_with_room_for(&pool, 2).await;
    let mut big = small_jail("big");
    big.limits.memory_bytes = 512 * MIB;
    let err = jails::create(&pool, tenant, &big).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "memory quota exceeded: 512M requested, 128M left of 128M"
    );
    // Nothing was created.
    assert!(
        jails::list_for_tenant(&pool, tenant)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn names_are_unique_within_a_tenant_and_free_after_delete() {
    let (pool, _) = common::fresh_database().await;
    node(&pool, "n1", 1 << 40).await;
    let tenant = tenant_with_room_for(&pool, 5).await;
    let first = jails::create(&pool, tenant, &small_jail("web"))
        .await
        .unwrap();
    let err = jails::create(&pool, tenant, &small_jail("web"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    jails::set_desired(&pool, tenant, first.id, DesiredState::Deleted)
        .await
        .unwrap();
    jails::create(&pool, tenant, &small_jail("web"))
        .await
        .unwrap();
}

#[tokio::test]
async fn another_tenants_jail_is_not_found() {
    let (pool, _) = common::fresh_database().await;
    node(&pool, "n1", 1 << 40).await;
    let a = tenant_with_room_for(&pool, 2).await;
    let b = tenant_with_room_for(&pool, 2).await;
    let jail = jails::create(&pool, a, &small_jail("web")).await.unwrap();
    assert!(matches!(
        jails::get(&pool, b, jail.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        jails::set_desired(&pool, b, jail.id, DesiredState::Deleted).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        jails::get(&pool, a, jail.id).await.unwrap().desired_state,
        DesiredState::Running
    );
}

#[tokio::test]
async fn placement_needs_a_live_node_with_room() {
    let (pool, _) = common::fresh_database().await;
    let tenant = tenant_with_room_for(&pool, 4).await;
    let err = jails::create(&pool, tenant, &small_jail("a"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NoCapacity(_)), "{err:?}");
    let small = node(&pool, "small", 100 * MIB).await;
    let big = node(&pool, "big", 130 * MIB).await;
    let j1 = jails::create(&pool, tenant, &small_jail("a"))
        .await
        .unwrap();
    assert_eq!(
        j1.node_id,
        Some(big),
        "the node with most free memory first"
    );
    let j2 = jails::create(&pool, tenant, &small_jail("b"))
        .await
        .unwrap();
    let j3 = jails::create(&pool, tenant, &small_jail("c"))
        .await
        .unwrap();
    let mut placed = [j2.node_id.unwrap(), j3.node_id.unwrap()];
    placed.sort();
    let mut expected = [small, big];
    expected.sort();
    assert_eq!(placed, expected);
    let err = jails::create(&pool, tenant, &small_jail("d"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NoCapacity(_)), "{err:?}");
    // A silent node gets nothing.
    sqlx::query("UPDATE nodes SET heartbeat_at = now() - interval '1 minute'")
        .execute(&pool)
        .await
        .unwrap();
    jails::set_desired(&pool, tenant, j1.id, DesiredState::Deleted)
        .await
        .unwrap();
    let err = jails::create(&pool, tenant, &small_jail("e"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no node has room for this jail right now (no node is up)"
    );
}

#[tokio::test]
async fn suspension_stops_jails_and_unsuspend_restores_each_wish() {
    let (pool, _) = common::fresh_database().await;
    node(&pool, "n1", 1 << 40).await;
    let tenant = tenant_with_room_for(&pool, 3).await;
    let running = jails::create(&pool, tenant, &small_jail("up"))
        .await
        .unwrap();
    let stopped = jails::create(&pool, tenant, &small_jail("down"))
        .await
        .unwrap();
    jails::set_desired(&pool, tenant, stopped.id, DesiredState::Stopped)
        .await
        .unwrap();
    tenants::suspend(&pool, tenant, None).await.unwrap();
    for j in jails::list_for_tenant(&pool, tenant).await.unwrap() {
        assert_eq!(j.desired_state, DesiredState::Stopped);
    }
    let err = jails::set_desired(&pool, tenant, running.id, DesiredState::Running)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "the tenant is suspended");
    tenants::unsuspend(&pool, tenant).await.unwrap();
    assert_eq!(
        jails::get(&pool, tenant, running.id)
            .await
            .unwrap()
            .desired_state,
        DesiredState::Running
    );
    assert_eq!(
        jails::get(&pool, tenant, stopped.id)
            .await
            .unwrap()
            .desired_state,
        DesiredState::Stopped
    );
    tenants::terminate(&pool, tenant).await.unwrap();
    assert!(
        jails::list_for_tenant(&pool, tenant)
            .await
            .unwrap()
            .iter()
            .all(|j| j.desired_state == DesiredState::Deleted)
    );
}

#[tokio::test]
async fn lowering_a_quota_scales_running_jails_down() {
    let (pool, _) = common::fresh_database().await;
    node(&pool, "n1", 1 << 40).await;
    let tenant = tenant_with_room_for(&pool, 4).await;
    let a = jails::create(&pool, tenant, &small_jail("a"))
        .await
        .unwrap();
    let b = jails::create(&pool, tenant, &small_jail("b"))
        .await
        .unwrap();
    tenants::set_overrides(
        &pool,
        tenant,
        &tenants::Overrides {
            memory_bytes: Some(64 * MIB),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let a2 = jails::get(&pool, tenant, a.id).await.unwrap();
    let b2 = jails::get(&pool, tenant, b.id).await.unwrap();
    assert_eq!(a2.limits.memory_bytes + b2.limits.memory_bytes, 64 * MIB);
    assert!(
        a2.generation > a.generation,
        "the agent is told to re-apply"
    );
    let (quota, used) = jails::quota_and_allocation(&pool, tenant).await.unwrap();
    assert_eq!(quota.memory_bytes, 64 * MIB);
    assert!(used.memory_bytes <= quota.memory_bytes);
    // Each shrunk jail remembers what it had, even over a second lowering.
    let had = jails::ShrunkFrom {
        cpu_millicores: 100,
        memory_bytes: 64 * MIB,
        pids: 50,
    };
    assert_eq!(a2.shrunk_from, Some(had));
    tenants::set_overrides(
        &pool,
        tenant,
        &tenants::Overrides {
            memory_bytes: Some(32 * MIB),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        jails::get(&pool, tenant, a.id).await.unwrap().shrunk_from,
        Some(had)
    );
    // No room yet: growing back is refused with what is left, and changes nothing.
    let err = jails::grow_back(&pool, tenant, a.id).await.unwrap_err();
    assert!(err.to_string().contains("memory quota exceeded"), "{err}");
    // The quota restored: each grows back to what it had, and forgets it.
    tenants::set_overrides(&pool, tenant, &tenants::Overrides::default())
        .await
        .unwrap();
    for id in [a.id, b.id] {
        let grown = jails::grow_back(&pool, tenant, id).await.unwrap();
        assert_eq!(grown.limits.memory_bytes, 64 * MIB);
        assert_eq!(grown.limits.cpu_millicores, 100);
        assert_eq!(grown.shrunk_from, None);
    }
    let err = jails::grow_back(&pool, tenant, a.id).await.unwrap_err();
    assert!(err.to_string().contains("not shrunk"), "{err}");
}

#[tokio::test]
async fn monthly_transfer_throttles_at_the_soft_share_and_suspends_at_the_quota() {
    use stockade_store::transfer::{self, Outcome};
    let (pool, _) = common::fresh_database().await;
    let node_id = node(&pool, "n1", 1 << 40).await;
    let tenant = tenant_with_room_for(&pool, 2).await;
    tenants::set_overrides(
        &pool,
        tenant,
        &tenants::Overrides {
            monthly_transfer_bytes: Some(1000),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let jail = jails::create(&pool, tenant, &small_jail("web"))
        .await
        .unwrap();
    let add_transfer = |bytes: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO usage_rollups (jail_id, hour, tenant_id, samples, net_rx_bytes, net_tx_bytes)
                 VALUES ($1, date_trunc('hour', now()), $2, 1, $3, 0)
                 ON CONFLICT (jail_id, hour) DO UPDATE SET net_rx_bytes = usage_rollups.net_rx_bytes + $3",
            )
            .bind(jail.id)
            .bind(tenant)
            .bind(bytes)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    add_transfer(500).await;
    assert_eq!(
        transfer::check(&pool, tenant, "test").await.unwrap(),
        Outcome::Nothing
    );
    assert!(
        transfer::throttles_on_node(&pool, node_id)
            .await
            .unwrap()
            .is_empty()
    );
    add_transfer(350).await; // 850 of 1000: past the plan's 80 % soft share.
    let before = jails::get(&pool, tenant, jail.id).await.unwrap().generation;
    assert_eq!(
        transfer::check(&pool, tenant, "test").await.unwrap(),
        Outcome::Throttled
    );
    assert_eq!(
        transfer::check(&pool, tenant, "test").await.unwrap(),
        Outcome::Nothing,
        "once a month"
    );
    assert!(
        jails::get(&pool, tenant, jail.id).await.unwrap().generation > before,
        "agents re-apply limits"
    );
    let throttles = transfer::throttles_on_node(&pool, node_id).await.unwrap();
    assert_eq!(throttles, vec![(tenant, 1_000_000)]);
    assert_eq!(
        stockade_store::audit::count_action(&pool, "quota.soft_limit_reached")
            .await
            .unwrap(),
        1
    );
    add_transfer(200).await;
    assert_eq!(
        transfer::check(&pool, tenant, "test").await.unwrap(),
        Outcome::Suspended
    );
    assert_eq!(
        tenants::get(&pool, tenant).await.unwrap().status,
        stockade_domain::TenantStatus::Suspended
    );
    assert_eq!(
        jails::get(&pool, tenant, jail.id)
            .await
            .unwrap()
            .desired_state,
        DesiredState::Stopped
    );
    assert_eq!(
        stockade_store::audit::count_action(&pool, "quota.hard_limit_reached")
            .await
            .unwrap(),
        1
    );
}
