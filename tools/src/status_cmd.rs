//! `sparefs status`: every meta replica's role, term, commit and applied
//! index, as a table or as the JSON object scripts read.

use crate::{current_caller, split_addresses};
use serde_json::{json, Value};
use sparefs_client::MetaClient;
use sparefs_proto::msg::{Reply, Request};
use sparefs_proto::namespace::{NsReply, ReadOp};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub async fn run(
    meta: Option<String>,
    data: Option<PathBuf>,
    json_out: bool,
) -> anyhow::Result<i32> {
    let addresses = match (meta, &data) {
        (Some(m), _) => split_addresses(&m),
        (None, Some(d)) => crate::up_cmd::read_cluster_file(d)?.meta_addresses(),
        (None, None) => anyhow::bail!("give --meta ADDRS or --data DIR"),
    };
    let cluster_file = data
        .as_ref()
        .and_then(|d| crate::up_cmd::read_cluster_file(d).ok());
    let pids = cluster_file.as_ref().map(|c| c.pids()).unwrap_or_default();
    let client = crate::meta_client(addresses.clone(), current_caller());
    let list = replica_rows(&client, addresses, &pids).await;
    if list.iter().all(|v| v["role"] == "unreachable") {
        // Nothing more to ask anyone: say why each replica did not answer.
        if json_out {
            println!("{}", json!({ "meta": list }));
        }
        for v in &list {
            eprintln!(
                "sparefs: {}: {}",
                v["address"].as_str().unwrap_or("?"),
                v["error"].as_str().unwrap_or("no answer")
            );
        }
        return Ok(2);
    }
    let (servers, health, repair) = data_rows(&client, &pids).await;
    // iSCSI exports and targets (null when this caller may not read them).
    let iscsi = crate::iscsi_cmd::summary(&client)
        .await
        .unwrap_or(Value::Null);
    if json_out {
        println!(
            "{}",
            json!({ "meta": list, "chunkservers": servers, "health": health, "repair": repair, "iscsi": iscsi })
        );
    } else {
        print_replicas(&list);
        println!();
        print_chunkservers(&servers);
        println!();
        print_health(&health, &repair);
        if !iscsi.is_null() {
            println!();
            crate::iscsi_cmd::print_summary(&iscsi);
        }
    }
    let healthy = list.iter().any(|v| v["role"] == "leader");
    Ok(if healthy { 0 } else { 2 })
}

/// One row per meta replica, by id: those named and every member any
/// replica reports (so a dead one still shows), with ids of unreachable
/// ones filled in from the others' member lists.
async fn replica_rows(
    client: &MetaClient,
    mut addresses: Vec<String>,
    pids: &BTreeMap<String, u32>,
) -> Vec<Value> {
    let mut rows: BTreeMap<String, Value> = BTreeMap::new();
    let mut i = 0;
    while i < addresses.len() {
        let address = addresses[i].clone();
        i += 1;
        match client.status_of(&address).await {
            Ok(s) => {
                for (_, a) in &s.members {
                    if !addresses.contains(a) {
                        addresses.push(a.clone());
                    }
                }
                rows.insert(address.clone(), json!({
                    "id": s.id.0, "address": address, "role": s.role.name(), "term": s.term,
                    "commit": s.commit, "applied": s.applied, "pid": s.pid,
                    "leader": s.leader.map(|l| l.0), "first_log_index": s.first_log_index, "last_log_index": s.last_log_index,
                    "fsck": s.fsck.map(|(done, estimated)| json!({"records": done, "estimated": estimated})),
                }));
            }
            Err(e) => {
                rows.insert(address.clone(), json!({
                    "id": Value::Null, "address": address, "role": "unreachable", "term": Value::Null,
                    "commit": Value::Null, "applied": Value::Null, "pid": pids.get(&address).copied(), "error": e.to_string(),
                }));
            }
        }
    }
    let mut known_ids = BTreeMap::new();
    for address in &addresses {
        if let Ok(s) = client.status_of(address).await {
            for (id, a) in s.members {
                known_ids.insert(a, id.0);
            }
            break;
        }
    }
    let mut list: Vec<Value> = rows
        .into_values()
        .map(|mut v| {
            if v["id"].is_null() {
                if let Some(id) = v["address"].as_str().and_then(|a| known_ids.get(a)) {
                    v["id"] = json!(id);
                }
            }
            v
        })
        .collect();
    list.sort_by_key(|v| v["id"].as_u64().unwrap_or(u64::MAX));
    list
}

/// Chunkservers, block health and repair progress, from the leader.
async fn data_rows(
    client: &MetaClient,
    pids: &BTreeMap<String, u32>,
) -> (Vec<Value>, Value, Value) {
    let mut servers = Vec::new();
    let mut health =
        json!({ "protected": Value::Null, "degraded": Value::Null, "unreadable": Value::Null });
    if let Ok(NsReply::Chunkservers(cs)) = client.read(ReadOp::ListChunkservers).await {
        for s in cs {
            servers.push(json!({
                "id": s.id.0, "address": s.address, "state": s.state.name(),
                "capacity_bytes": s.capacity_bytes, "used_bytes": s.used_bytes, "pid": pids.get(&s.address).copied(),
                "draining": s.draining,
            }));
        }
    }
    if let Ok(NsReply::Health {
        protected,
        degraded,
        unreadable,
    }) = client.read(ReadOp::Health).await
    {
        health = json!({ "protected": protected, "degraded": degraded, "unreadable": unreadable });
    }
    let repair = match client.call_leader(&Request::RepairStatus).await {
        Ok(Reply::Repair(p)) => json!({
            "blocks_to_repair": p.blocks_to_repair, "bytes_to_repair": p.bytes_to_repair,
            "bytes_to_balance": p.bytes_to_balance, "in_flight": p.in_flight,
            "repaired_bytes": p.repaired_bytes, "rate_bytes_per_sec": p.rate_bytes_per_sec,
            "eta_secs": p.eta_secs,
        }),
        _ => Value::Null,
    };
    (servers, health, repair)
}

/// A number field of a row, or "-".
fn number(v: &Value, k: &str) -> String {
    v[k].as_u64()
        .map(|n| n.to_string())
        .unwrap_or_else(|| "-".into())
}

fn print_replicas(list: &[Value]) {
    println!(
        "{:<4} {:<22} {:<12} {:>6} {:>10} {:>10} {:>8}",
        "ID", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "PID"
    );
    for v in list {
        println!(
            "{:<4} {:<22} {:<12} {:>6} {:>10} {:>10} {:>8}",
            number(v, "id"),
            v["address"].as_str().unwrap_or("-"),
            v["role"].as_str().unwrap_or("-"),
            number(v, "term"),
            number(v, "commit"),
            number(v, "applied"),
            number(v, "pid")
        );
    }
    for v in list {
        if let (Some(done), Some(total)) = (
            v["fsck"]["records"].as_u64(),
            v["fsck"]["estimated"].as_u64(),
        ) {
            println!(
                "replica {} runs an fsck: {done} of about {total} records read",
                number(v, "id")
            );
        }
    }
}

fn print_chunkservers(servers: &[Value]) {
    println!(
        "{:<4} {:<22} {:<6} {:>14} {:>14} {:>8}",
        "CS", "ADDRESS", "STATE", "CAPACITY", "USED", "PID"
    );
    for s in servers {
        let state = match (s["state"].as_str(), s["draining"].as_bool()) {
            (Some(st), Some(true)) => format!("{st}*"),
            (Some(st), _) => st.to_string(),
            _ => "-".into(),
        };
        println!(
            "{:<4} {:<22} {:<6} {:>14} {:>14} {:>8}",
            number(s, "id"),
            s["address"].as_str().unwrap_or("-"),
            state,
            number(s, "capacity_bytes"),
            number(s, "used_bytes"),
            number(s, "pid")
        );
    }
}

fn print_health(health: &Value, repair: &Value) {
    println!(
        "blocks: {} protected, {} degraded, {} unreadable",
        health["protected"], health["degraded"], health["unreadable"]
    );
    if !repair.is_null() {
        let eta = repair["eta_secs"]
            .as_f64()
            .map(|s| format!("{s:.0} s"))
            .unwrap_or_else(|| "unknown".into());
        println!(
            "repair: {} blocks ({} MiB) to repair, {} in flight, {:.1} MiB/s, ETA {eta}; {} MiB to rebalance",
            repair["blocks_to_repair"],
            repair["bytes_to_repair"].as_u64().unwrap_or(0) >> 20,
            repair["in_flight"],
            repair["rate_bytes_per_sec"].as_f64().unwrap_or(0.0) / 1048576.0,
            repair["bytes_to_balance"].as_u64().unwrap_or(0) >> 20,
        );
    }
}
