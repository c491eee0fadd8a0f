//! MCP servers as tool providers, over the Streamable HTTP transport (the
//! official Rust SDK, `rmcp`).
//!
//! An agent's `[[agents.mcp_servers]]` each become a set of tools named
//! `<server>__<tool>`, listed from the server (cached for `TOOLS_TTL`; a server
//! that cannot be reached contributes its last known tools, or none, and the
//! turn goes on). The MCP session is opened lazily, shared by turns, and opened
//! again after a transport error. Requests go through the tools' egress guard
//! (`tools::egress`): the URL is checked, and the HTTP client is the guarded one.
//! MCP tools act on the world, so their results are durable like HTTP
//! functions' (see `Toolbox::run`).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{FutureExt, future::BoxFuture};
use rmcp::{
    RoleClient, ServiceExt,
    model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation},
    service::RunningService,
    transport::{
        StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
    },
};
use secrecy::ExposeSecret;
use serde_json::Value;

use super::{Tool, TurnScope, egress::Egress};
use crate::{config::McpServerConfig, providers::ToolSpec};

/// How long a server's tool list is used before it is asked again.
const TOOLS_TTL: Duration = Duration::from_secs(60);
/// Separates the server's name from its tool's in the names the model sees.
pub const SEPARATOR: &str = "__";

type Session = RunningService<RoleClient, ClientConfig>;

pub struct McpServer {
    name: String,
    url: String,
    timeout: Duration,
    config: McpServerConfig,
    egress: Egress,
    http: reqwest::Client,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    tools: tokio::sync::Mutex<Option<(Vec<ToolSpec>, Instant)>>,
}

impl McpServer {
    pub fn new(
        config: &McpServerConfig,
        default_timeout: Duration,
        egress: &Egress,
        http: reqwest::Client,
    ) -> Self {
        Self {
            name: config.name.clone(),
            url: config.url.clone(),
            timeout: config.timeout.map_or(default_timeout, |t| t.0),
            config: config.clone(),
            egress: egress.clone(),
            http,
            session: tokio::sync::Mutex::default(),
            tools: tokio::sync::Mutex::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The open session, or a new one.
    async fn session(&self) -> Result<Arc<Session>, String> {
        let mut slot = self.session.lock().await;
        if let Some(session) = slot.as_ref()
            && !session.is_closed()
        {
            return Ok(session.clone());
        }
        let url = reqwest::Url::parse(&self.url).map_err(|e| format!("bad MCP URL: {e}"))?;
        self.egress
            .check_url(&url)
            .map_err(|refused| format!("the MCP server's URL is refused: {refused}"))?;
        let mut transport_config = StreamableHttpClientTransportConfig::with_uri(self.url.as_str());
        if let Some(token) = &self.config.token {
            transport_config = transport_config.auth_header(token.expose_secret());
        }
        let transport =
            StreamableHttpClientTransport::with_client(self.http.clone(), transport_config);
        let info = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("microclaw", env!("CARGO_PKG_VERSION")),
        );
        let session = tokio::time::timeout(self.timeout, info.serve(transport))
            .await
            .map_err(|_| {
                format!(
                    "the MCP server did not answer within {}s",
                    self.timeout.as_secs_f64()
                )
            })?
            .map_err(|e| format!("could not open an MCP session: {e}"))?;
        let session = Arc::new(session);
        *slot = Some(session.clone());
        Ok(session)
    }

    async fn forget_session(&self) {
        *self.session.lock().await = None;
    }

    /// The server's tools, named `<server>__<tool>` (cached; empty when the
    /// server was never reachable).
    pub async fn tool_specs(&self) -> Vec<ToolSpec> {
        let mut cache = self.tools.lock().await;
        if let Some((specs, at)) = cache.as_ref()
            && at.elapsed() < TOOLS_TTL
        {
            return specs.clone();
        }
        match self.list().await {
            Ok(specs) => {
                *cache = Some((specs.clone(), Instant::now()));
                specs
            }
            Err(e) => {
                tracing::warn!(server = %self.name, error = %e, "MCP server's tools unavailable");
                self.forget_session().await;
                cache
                    .as_ref()
                    .map(|(specs, _)| specs.clone())
                    .unwrap_or_default()
            }
        }
    }

    async fn list(&self) -> Result<Vec<ToolSpec>, String> {
        let session = self.session().await?;
        let tools = tokio::time::timeout(self.timeout, session.list_all_tools())
            .await
            .map_err(|_| "listing tools timed out".to_owned())?
            .map_err(|e| format!("listing tools failed: {e}"))?;
        Ok(tools
            .into_iter()
            .map(|tool| ToolSpec {
                name: format!("{}{SEPARATOR}{}", self.name, tool.name),
                description: tool.description.map(|d| d.into_owned()).unwrap_or_default(),
                schema: Value::Object((*tool.input_schema).clone()),
            })
            .collect())
    }

    /// Calls `tool` (its name on the server) with `arguments`.
    pub async fn call(&self, tool: &str, arguments: &Value) -> Result<String, String> {
        let session = self.session().await?;
        let arguments = match arguments {
            Value::Object(map) => map.clone(),
            Value::Null => serde_json::Map::new(),
            other => return Err(format!("arguments must be an object, got {other}")),
        };
        let request = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments);
        let result = match tokio::time::timeout(self.timeout, session.call_tool(request)).await {
            Err(_) => {
                return Err(format!(
                    "the MCP tool did not answer within {}s",
                    self.timeout.as_secs_f64()
                ));
            }
            Ok(Err(e)) => {
                self.forget_session().await;
                return Err(format!("the MCP call failed: {e}"));
            }
            Ok(Ok(result)) => result,
        };
        let text = match &result.structured_content {
            Some(structured) => structured.to_string(),
            None => result
                .content
                .iter()
                .filter_map(|block| block.as_text().map(|t| t.text.clone()))
                .collect::<Vec<_>>()
                .join("\n"),
        };
        match result.is_error {
            Some(true) => Err(text),
            _ => Ok(text),
        }
    }
}

/// One tool of an MCP server, as the toolbox runs it.
pub struct McpTool {
    pub server: Arc<McpServer>,
    /// The tool's name on the server.
    pub tool: String,
}

impl Tool for McpTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: format!("{}{SEPARATOR}{}", self.server.name, self.tool),
            description: String::new(),
            schema: Value::Null,
        }
    }

    fn durable(&self) -> bool {
        true
    }

    fn call<'a>(
        &'a self,
        arguments: &'a Value,
        _scope: &'a TurnScope,
        _call_key: &'a str,
    ) -> BoxFuture<'a, Result<String, String>> {
        self.server.call(&self.tool, arguments).boxed()
    }
}
