//! The pages of datalake channels: an organization's channels, and a
//! channel's files (newest first, a page at a time, with the API's
//! cursors) with the run that wrote each file out, when one did. Which
//! file started which run is on each trigger's page.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use maud::html;
use serde::Deserialize;
use sluice_engine::control::{Control, ListFiles};

use crate::pages::{more, shell, PAGE};
use crate::view::{when, word};
use crate::{failed, Session};

#[derive(Debug, Default, Deserialize)]
pub struct ChannelsParams {
    offset: Option<u32>,
}

/// An organization's channels (the datalake API pages them by offset;
/// so does this page).
pub async fn channels(
    State(control): State<Arc<Control>>,
    s: Session,
    Query(p): Query<ChannelsParams>,
) -> Response {
    let offset = p.offset.unwrap_or(0);
    let (list, more_left, limit, offset) = match control
        .list_channels(&s.who, &s.org, Some(PAGE), Some(offset), None)
        .await
    {
        Ok(x) => x,
        Err(e) => return failed(e),
    };
    let next = more_left.then(|| (offset + limit).to_string());
    shell(
        &s,
        "Channels",
        None,
        html! {
            h1 { "Datalake channels" }
            @if list.is_empty() {
                p.empty {
                    "No channel yet. Make one through the ABEJA-style datalake API ("
                    code { "POST /organizations/" (s.org) "/channels" }
                    "); files uploaded to it can start runs through a deployment's trigger."
                }
            } @else {
                table #channels {
                    thead { tr { th { "Channel" } th { "Name" } th { "Description" } th { "Storage" } th { "Made" } } }
                    tbody {
                        @for c in &list {
                            tr {
                                td { a href={ "/datalake/" (c.id) } { (c.id) } }
                                td { (c.name) @if c.archived { " " (word("archived", "st-cancelled")) } }
                                td { (c.description) }
                                td { (c.storage_type) }
                                td { (when(Some(c.created_at))) }
                            }
                        }
                    }
                }
                (more(next.as_deref(), "/datalake?offset="))
            }
        },
    )
}

#[derive(Debug, Default, Deserialize)]
pub struct FilesParams {
    after: Option<String>,
}

/// A channel's files, newest first.
pub async fn channel(
    State(control): State<Arc<Control>>,
    s: Session,
    Path(channel): Path<String>,
    Query(p): Query<FilesParams>,
) -> Response {
    let c = match control.get_channel(&s.who, &s.org, &channel).await {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let files = match control
        .list_files(
            &s.who,
            &channel,
            ListFiles {
                items_per_page: Some(PAGE.to_string()),
                next_page_token: p.after.clone(),
                ..Default::default()
            },
        )
        .await
    {
        Ok(f) => f,
        Err(e) => return failed(e),
    };
    shell(
        &s,
        &format!("Channel {}", c.id),
        None,
        html! {
            p.crumbs { a href="/datalake" { "Datalake" } " / " (c.id) }
            h1 { "Channel " (c.name) }
            @if !c.description.is_empty() { p { (c.description) } }
            h2 { "Files" }
            @if files.files.is_empty() {
                p.empty { "No file yet: upload one with " code { "POST /channels/" (c.id) "/upload" } "." }
            } @else {
                table #files {
                    thead { tr { th { "File" } th { "Type" } th { "Bytes" } th { "Uploaded" } th { "Written by run" } } }
                    tbody {
                        @for f in &files.files {
                            tr {
                                td { code { (f.file_id) } }
                                td { (f.content_type) }
                                td.num { (f.size) }
                                td { (when(Some(f.uploaded_at))) }
                                td { (f.source_run_id.as_ref().map(|r| r.to_string()).unwrap_or_default()) }
                            }
                        }
                    }
                }
                (more(files.next_page_token.as_deref().map(crate::jobs::urlencode).as_deref(), &format!("/datalake/{}?after=", c.id)))
            }
        },
    )
}
