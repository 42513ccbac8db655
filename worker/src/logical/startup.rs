//! Everything a logical run does before its first message: connections, the
//! Kafka side, the slot check, the backfill's preparation, the replication
//! stream and the transaction assembler. Kept apart from the loop so that
//! the loop holds only what changes between messages.
//!
//! Order matters, and is the invariant of this module:
//! 1. Kafka first (fence, then read the position): the position read after
//!    fencing is final.
//! 2. The slot is checked before anything streams, and definite backfill
//!    problems (no key, no watermark table) surface before the stream
//!    starts.
//! 3. Backfill chunks are read only once the stream started: every
//!    watermark lands after the stream's start, so the stream sees them.

use std::path::PathBuf;
use std::sync::Arc;

use siphon_crds::worker_config::WorkerConfig;

use crate::backfill::Backfill;
use crate::capture::{CaptureError, Output, connect_params, kafka_ids, sql_connect, start_kafka};
use crate::change::Lsn;
use crate::config::Validated;
use crate::metrics::Metrics;
use crate::offsets::Position;
use crate::progress::Progress;
use crate::record::{EncoderSettings, RecordEncoder};
use crate::replication::{
    Assembler, AssemblerConfig, Decoder, ReplicationConnection, ReplicationOptions, choose_protocol,
};
use crate::sink::{KafkaSink, options};
use crate::values::registry::TypeRegistry;

/// A logical run, started: what the loop reads from and writes to.
pub(super) struct Started<'a> {
    /// Heartbeats and catalog reads.
    pub sql: tokio_postgres::Client,
    pub conn: ReplicationConnection,
    pub decoder: Decoder,
    pub assembler: Assembler,
    /// At least once, what waits for acknowledgements is an encoded
    /// position carrying backfill progress.
    pub out: Output<'a, Lsn, Vec<u8>>,
    pub position: Position,
    pub backfill: Backfill,
}

/// Start a logical run (see the module doc for the order).
pub(super) async fn start<'a>(
    v: &Validated,
    metrics: &'a Metrics,
    progress: &Progress,
) -> Result<Started<'a>, CaptureError> {
    let cfg = &v.config;
    let (client_id, tx_id) = kafka_ids(v);
    let props = options::producer_properties(&cfg.kafka, &v.secrets, &client_id, tx_id.as_deref());
    tracing::debug!(properties = ?options::redacted(&props), "kafka producer");

    let sql = sql_connect(v).await?;
    let registry = TypeRegistry::load(&sql).await.unwrap_or_else(|error| {
        tracing::warn!(%error, "cannot read pg_type; non-built-in types are encoded as text");
        TypeRegistry::builtin()
    });
    let encoder = RecordEncoder::new(EncoderSettings::from_config(cfg), Arc::new(registry));
    let topic_names: Vec<String> = if cfg.kafka.topics.as_ref().is_some_and(|t| t.create) {
        published_tables(&sql, cfg)
            .await?
            .iter()
            .map(|(s, t)| encoder.topic_for(s, t))
            .collect()
    } else {
        Vec::new()
    };
    let (sink, mut position): (KafkaSink<Lsn>, _) = start_kafka(v, &props, &topic_names).await?;

    check_slot(&sql, v).await?;
    let completed_before = position.completed_request.clone();
    let mut backfill = Backfill::prepare(&sql, v, &mut position, progress).await?;

    let mut conn = ReplicationConnection::connect(&connect_params(v)).await?;
    let version = conn.server_version_num().await?;
    let mut proto = choose_protocol(version);
    if !cfg.logical.stream_in_progress {
        proto.streaming = false;
    }
    conn.start_replication(
        &cfg.logical.slot_name,
        Lsn(0),
        &ReplicationOptions {
            proto,
            publication_names: vec![cfg.logical.publication_name.clone()],
        },
    )
    .await?;
    if backfill.has_work() {
        backfill.start(sql_connect(v).await?, &position).await?;
    }

    let assembler = Assembler::new(AssemblerConfig {
        max_memory: usize::try_from(cfg.max_transaction_memory).unwrap_or(usize::MAX),
        spill_dir: PathBuf::from(&cfg.spill_dir).join(cfg.name.replace('/', "_")),
        key_columns: crate::catalog::full_identity_keys(&sql, cfg)
            .await
            .map_err(|source| CaptureError::Sql {
                what: "reading the key columns of REPLICA IDENTITY FULL tables",
                source,
            })?,
    })?;
    let mut out = Output::new(v, metrics, sink, encoder);
    if position.completed_request != completed_before {
        // A snapshot request with nothing to read is complete at once.
        out.write_position(&position.encode()).await?;
    }
    Ok(Started {
        sql,
        conn,
        decoder: Decoder::new(),
        assembler,
        out,
        position,
        backfill,
    })
}

/// Check the slot before streaming: present, not lost, not active elsewhere.
/// Creates it only when the configuration says so (standalone use).
pub async fn check_slot(sql: &tokio_postgres::Client, v: &Validated) -> Result<(), CaptureError> {
    let slot = &v.config.logical.slot_name;
    let state = siphon_postgres::slot::state(sql, slot)
        .await
        .map_err(|source| CaptureError::Sql {
            what: "reading pg_replication_slots",
            source,
        })?;
    match state {
        None if v.config.logical.create_slot => {
            siphon_postgres::slot::create(sql, slot, false)
                .await
                .map_err(|source| CaptureError::Sql {
                    what: "creating the slot",
                    source,
                })?;
            tracing::info!(%slot, "created replication slot");
            Ok(())
        }
        None => Err(CaptureError::SlotMissing { slot: slot.clone() }),
        Some(state) if state.lost => Err(CaptureError::SlotLost { slot: slot.clone() }),
        Some(siphon_postgres::slot::SlotState {
            active_pid: Some(pid),
            ..
        }) => Err(CaptureError::SlotActive {
            slot: slot.clone(),
            pid,
        }),
        Some(_) => Ok(()),
    }
}

/// The captured tables as `(schema, table)`: `schema.*` becomes every table
/// the publication holds in that schema, so that their topics are created
/// like those of tables named one by one.
async fn published_tables(
    sql: &tokio_postgres::Client,
    cfg: &WorkerConfig,
) -> Result<Vec<(String, String)>, CaptureError> {
    let mut out = Vec::new();
    for (schema, table) in cfg.tables.iter().filter_map(|t| t.name.split_once('.')) {
        if table != "*" {
            out.push((schema.to_string(), table.to_string()));
            continue;
        }
        let rows = sql
            .query(
                "SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 ORDER BY 1",
                &[&cfg.logical.publication_name, &schema],
            )
            .await
            .map_err(|source| CaptureError::Sql {
                what: "listing the published tables",
                source,
            })?;
        let watermark = cfg.snapshot.watermark_table.split_once('.');
        out.extend(
            rows.iter()
                .map(|r| (schema.to_string(), r.get::<_, String>(0)))
                .filter(|(s, t)| watermark != Some((s.as_str(), t.as_str()))),
        );
    }
    Ok(out)
}
