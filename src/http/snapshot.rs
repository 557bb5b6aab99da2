//! `/v1/snapshot`: backup (GET) and restore (PUT) of the whole replicated state.
//!
//! A restore streams the archive to a staging file (never into memory as a whole request),
//! verifies it completely, then commits one small Raft entry naming the file and its
//! checksum; the state machine replaces the state from the file. A bad archive is refused
//! with 400 before anything is proposed, so nothing changes.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::ApiError;
use super::query::Query;
use super::{Ctx, HttpContext};
use crate::model::{
    Command, CommandResult, RestoreArchive, RestorePart, RestoreParts, RestoreRequest, RESTORE_PART_BYTES,
};
use crate::store::archive;

/// Snapshots are taken and restored on a server: a client agent holds no state to save and
/// no disk the servers could read an archive from.
fn require_server(ctx: &Ctx) -> Result<(), ApiError> {
    if ctx.cluster.is_server() {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "this agent is a client: take and restore snapshots through a server's HTTP API".into(),
        ))
    }
}

pub async fn save(ctx: Ctx, q: Query) -> Result<Response, ApiError> {
    require_server(&ctx)?;
    ctx.check_consistency(&q).await?;
    let permit = ctx.snapshot_save_permits.clone().try_acquire_owned().map_err(|_| {
        ApiError::TooMany(format!(
            "too many snapshot saves in progress (limits.snapshot_saves_in_flight = {}); retry later",
            ctx.limits.snapshot_saves_in_flight
        ))
    })?;
    let (file, size, index) = ctx.cluster.backup().await?;
    let mut headers = ctx.index_headers(index);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    // Sent from the file in chunks; the permit (and the unnamed file) go when the body
    // has been sent or the client has gone.
    let chunks =
        tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), crate::backup::BUFFER_BYTES);
    let body = Body::from_stream(chunks.map(move |chunk| {
        let _held = &permit;
        chunk
    }));
    Ok((headers, body).into_response())
}

/// Removes the staged archive however the request ends.
struct Staged(std::path::PathBuf);

impl Drop for Staged {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.0.display(), error = %e, "cannot remove a staged snapshot archive");
            }
        }
    }
}

pub async fn restore(ctx: Ctx, headers: HeaderMap, mut body: Body) -> Result<Response, ApiError> {
    require_server(&ctx)?;
    let max = ctx.limits.snapshot_max_bytes;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(len) = declared.filter(|len| *len > max) {
        return Err(ApiError::BodyTooLarge { size: len, max });
    }
    let dir = ctx.store.staging_dir().to_path_buf();
    let staging_error =
        |e: std::io::Error| ApiError::Internal(format!("cannot stage the archive in {}: {e}", dir.display()));
    tokio::fs::create_dir_all(&dir).await.map_err(staging_error)?;
    let name = ctx.store.new_staged_archive_name();
    let staged = Staged(dir.join(&name));
    let mut file = tokio::fs::File::create(&staged.0).await.map_err(staging_error)?;
    let mut size: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::BadRequest(format!("Failed to read request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        size += data.len() as u64;
        if size > max {
            return Err(ApiError::BodyTooLarge { size, max });
        }
        file.write_all(&data).await.map_err(staging_error)?;
    }
    file.sync_all().await.map_err(staging_error)?;
    drop(file);
    // Alone, this server restores from the staged file (up to snapshot_max_bytes); with
    // others, the archive travels through the log so that every server restores it: in the
    // entry itself up to RESTORE_PART_BYTES, else in parts, one entry each, then a command
    // that restores from them.
    let several = ctx.cluster.server_count() > 1;
    let inline = several && size <= RESTORE_PART_BYTES;
    // Checked streaming from the staged file: memory stays at one record.
    let path = staged.0.clone();
    let (verified, bytes) = tokio::task::spawn_blocking(move || {
        let open = || {
            std::fs::File::open(&path).map(|file| std::io::BufReader::with_capacity(crate::backup::BUFFER_BYTES, file))
        };
        let verified = archive::check(open, size);
        let bytes = if inline && verified.is_ok() { std::fs::read(&path)? } else { Vec::new() };
        Ok::<_, std::io::Error>((verified, bytes))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("archive check failed: {e}")))?
    .map_err(staging_error)?;
    let verified = verified.map_err(|e| ApiError::BadRequest(format!("Invalid snapshot archive: {}", e.0)))?;
    let checksum = verified.checksum;
    let command = if inline {
        Command::RestoreArchive(RestoreArchive { archive: bytes, checksum })
    } else if several {
        send_parts(&ctx, &staged.0, &name, size).await?;
        Command::RestoreParts(RestoreParts { restore: name, size_bytes: size, checksum })
    } else {
        Command::Restore(RestoreRequest { archive: name, checksum, size_bytes: size })
    };
    match ctx.cluster.write(command).await? {
        CommandResult::Done => {
            tracing::info!(index = verified.header.index, bytes = size, "state restored from a snapshot archive");
            Ok(().into_response())
        }
        CommandResult::Rejected(why) => Err(ApiError::Internal(format!("Restore failed: {why}"))),
        other => Err(ApiError::Internal(format!("Restore failed: unexpected result {other:?}"))),
    }
}

/// Sends the staged archive at `path` through the log in parts of [`RESTORE_PART_BYTES`],
/// each committed before the next is read, so memory stays at one part.
async fn send_parts(ctx: &HttpContext, path: &std::path::Path, restore: &str, size: u64) -> Result<(), ApiError> {
    let read_error = |e: std::io::Error| ApiError::Internal(format!("cannot read the staged archive: {e}"));
    let mut file = tokio::fs::File::open(path).await.map_err(read_error)?;
    let (mut offset, mut parts) = (0, 0);
    while offset < size {
        let mut bytes = vec![0; RESTORE_PART_BYTES.min(size - offset) as usize];
        file.read_exact(&mut bytes).await.map_err(read_error)?;
        let len = bytes.len() as u64;
        let part = Command::RestorePart(RestorePart { restore: restore.to_string(), offset, bytes });
        match ctx.cluster.write(part).await? {
            CommandResult::Done => (offset, parts) = (offset + len, parts + 1),
            CommandResult::Rejected(why) => return Err(ApiError::Internal(format!("Restore failed: {why}"))),
            other => return Err(ApiError::Internal(format!("Restore failed: unexpected result {other:?}"))),
        }
    }
    tracing::info!(restore, parts, bytes = size, "backup archive sent through the Raft log in parts");
    Ok(())
}
