//! The dashboard's CSS and JS, compiled into the binary. They are served under names that carry
//! a hash of their content, so browsers may keep them for a year and still never run a stale
//! script after an upgrade.

use std::sync::LazyLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::extract::ApiPath;

const CSS: &str = include_str!("../../assets/dashboard/app.css");
const JS: &str = include_str!("../../assets/dashboard/app.js");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asset {
    Css,
    Js,
}

impl Asset {
    fn body(self) -> &'static str {
        match self {
            Self::Css => CSS,
            Self::Js => JS,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::Css => "text/css; charset=utf-8",
            Self::Js => "text/javascript; charset=utf-8",
        }
    }

    /// `app-<hash>.css`: the name pages link to.
    fn versioned_name(self) -> &'static str {
        static NAMES: LazyLock<[String; 2]> = LazyLock::new(|| {
            [Asset::Css, Asset::Js].map(|asset| {
                let hash = hex::encode(&Sha256::digest(asset.body().as_bytes())[..6]);
                let ext = if asset == Asset::Css { "css" } else { "js" };
                format!("app-{hash}.{ext}")
            })
        });
        match self {
            Self::Css => &NAMES[0],
            Self::Js => &NAMES[1],
        }
    }
}

/// The URL a page links to.
pub(crate) fn url(base: &str, asset: Asset) -> String {
    format!("{base}/dashboard/assets/{}", asset.versioned_name())
}

pub(crate) async fn serve(ApiPath(file): ApiPath<String>) -> Result<Response, ApiError> {
    let (asset, cache) = [Asset::Css, Asset::Js]
        .into_iter()
        .find_map(|asset| {
            if file == asset.versioned_name() {
                Some((asset, "public, max-age=31536000, immutable"))
            } else if file == format!("app.{}", if asset == Asset::Css { "css" } else { "js" }) {
                Some((asset, "no-cache"))
            } else {
                None
            }
        })
        .ok_or_else(|| ApiError::NotFound(format!("no dashboard asset named {file}")))?;
    let mut response = asset.body().into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type()));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    Ok(response)
}
