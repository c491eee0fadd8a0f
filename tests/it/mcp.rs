//! MCP tools end to end: a small MCP server built with the official Rust SDK
//! (`rmcp`, Streamable HTTP) lists a tool, the agent's model is offered it as
//! `<server>__<tool>`, calls it, and gets its result.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use rmcp::{
    ErrorData, RoleServer, ServerHandler,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
        PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    },
    service::RequestContext,
    transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    },
};
use serde_json::json;

use crate::helpers::{TestApp, TestConfig, TestMessage};

/// A calculator with one tool, `add`.
#[derive(Clone, Default)]
struct Calculator {
    calls: Arc<AtomicUsize>,
}

impl ServerHandler for Calculator {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let schema = json!({
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"]
        });
        let schema = Arc::new(schema.as_object().unwrap().clone());
        Ok(ListToolsResult::with_all_items(vec![Tool::new(
            "add",
            "Add two numbers",
            schema,
        )]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let arguments = request.arguments.unwrap_or_default();
        let number = |key: &str| arguments.get(key).and_then(|v| v.as_f64()).unwrap_or(0.0);
        let result = match request.name.as_ref() {
            "add" => CallToolResult::success(vec![ContentBlock::text(format!(
                "{}",
                number("a") + number("b")
            ))]),
            other => CallToolResult::error(vec![ContentBlock::text(format!("no tool {other}"))]),
        };
        Ok(CallToolResponse::Complete(result))
    }
}

async fn start_mcp_server(calculator: Calculator) -> String {
    let service = StreamableHttpService::new(
        move || Ok(calculator.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{address}/mcp")
}

#[tokio::test]
async fn an_mcp_servers_tools_are_listed_and_called() {
    let calculator = Calculator::default();
    let url = start_mcp_server(calculator.clone()).await;
    let app = TestApp::spawn_with_worker(TestConfig {
        extra: format!(
            r#"
[tools]
allowed_private_networks = ["127.0.0.1"]

[[agents.mcp_servers]]
name = "calc"
url = "{url}"
"#
        ),
        ..TestConfig::default()
    })
    .await;
    app.model
        .push_tool_call("calc__add", json!({"a": 2, "b": 40}));
    app.post_message(&TestMessage::direct("m1", "ada", "ada:what is 2 + 40?"))
        .await;
    app.wait_for_replies(1, std::time::Duration::from_secs(20))
        .await;
    let calls = app.model.calls();
    assert_eq!(
        calls[0].tools_offered,
        microclaw::tools::BUILTIN.len() + 1,
        "the MCP tool is offered beside the built-in ones"
    );
    assert_eq!(calls[1].tool_results, ["42"], "{:?}", calls[1].tool_results);
    assert_eq!(calculator.calls.load(Ordering::SeqCst), 1);
    app.stop().await;
}
