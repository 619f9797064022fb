//! The wit-bindgen exports: each converts between the WIT types and [`crate::policy`]'s, nothing
//! more. No function here can trap: every failure is a `result` or a `decision`.

use crate::policy::{self, Decision, Policy};
use std::cell::RefCell;
use tollgate_core::dialect::Dialect;
use tollgate_core::protocol::{Principal, Tokens};
use tollgate_core::usage::ResponseFormat;

wit_bindgen::generate!({ world: "policy", path: "../wit" });

use exports::tollgate::policy::api as wit;

struct Component;

impl wit::Guest for Component {
    type Engine = EngineImpl;
    type Meter = MeterImpl;
}

struct EngineImpl(Policy);

struct MeterImpl(RefCell<policy::Meter>);

fn dialect(d: Dialect) -> wit::Dialect {
    match d {
        Dialect::OpenAi => wit::Dialect::Openai,
        Dialect::AzureOpenAi => wit::Dialect::AzureOpenai,
        Dialect::Anthropic => wit::Dialect::Anthropic,
        Dialect::Gemini => wit::Dialect::Gemini,
    }
}

fn principal(p: Principal) -> wit::Principal {
    wit::Principal {
        org: p.org,
        cost_center: p.cost_center,
        team: p.team,
        user: p.user,
        key_id: p.key_id,
        use_case: p.use_case,
        tier: p.tier,
        task: p.task,
    }
}

fn headers(h: Vec<(String, String)>) -> Vec<wit::Header> {
    h.into_iter().map(|(name, value)| wit::Header { name, value }).collect()
}

fn usage(t: Tokens) -> wit::Usage {
    wit::Usage { input: t.input, output: t.output, cache_read: t.cache_read, cache_write: t.cache_write, reasoning: t.reasoning }
}

impl wit::GuestEngine for EngineImpl {
    fn create(config_json: String) -> Result<wit::Engine, wit::ConfigError> {
        match Policy::new(&config_json) {
            Ok(p) => Ok(wit::Engine::new(EngineImpl(p))),
            Err(e) => Err(wit::ConfigError { field: e.field, problem: e.problem }),
        }
    }

    fn recognise(&self, request: wit::HttpRequest) -> wit::Decision {
        let request = policy::Request {
            method: request.method,
            path: request.path,
            headers: request.headers.into_iter().map(|h| (h.name, h.value)).collect(),
            body: request.body,
        };
        match self.0.recognise(&request) {
            Decision::PassThrough => wit::Decision::PassThrough,
            Decision::Deny(d) => wit::Decision::Deny(wit::Denial {
                status: d.status,
                code: d.code.to_owned(),
                message: d.message,
                param: d.param,
                body: d.body,
            }),
            Decision::Forward(r) => {
                let r = *r;
                wit::Decision::Forward(wit::Route {
                    dialect: dialect(r.dialect),
                    endpoint: r.endpoint.to_owned(),
                    principal: principal(r.principal),
                    requested_model: r.requested_model,
                    routed_model: r.routed_model,
                    rule: r.rule,
                    set_headers: headers(r.set_headers),
                    path: r.path,
                    body: r.body,
                    streaming: r.stream,
                    max_output_tokens: r.max_output_tokens,
                })
            }
        }
    }

    fn meter(&self, path: String, format: wit::ResponseFormat) -> Option<wit::Meter> {
        let format = match format {
            wit::ResponseFormat::Json => ResponseFormat::Json,
            wit::ResponseFormat::Sse => ResponseFormat::Sse,
        };
        self.0.meter(&path, format).map(|m| wit::Meter::new(MeterImpl(RefCell::new(m))))
    }

    fn price(&self, model: String, u: wit::Usage) -> Result<wit::Cost, wit::PriceError> {
        let tokens = Tokens { input: u.input, output: u.output, cache_read: u.cache_read, cache_write: u.cache_write, reasoning: u.reasoning, ..Tokens::default() };
        self.0
            .price(&model, &tokens)
            .map(|c| wit::Cost { micros: c.micros, known_price: c.known_price, long_context: c.long_context })
            .map_err(wit::PriceError::UnknownModel)
    }
}

impl wit::GuestMeter for MeterImpl {
    fn feed(&self, chunk: Vec<u8>) {
        // The component model never re-enters a resource, so the meter is never borrowed here.
        if let Ok(mut m) = self.0.try_borrow_mut() {
            m.feed(&chunk);
        }
    }

    fn finish(&self) -> wit::Metered {
        match self.0.try_borrow_mut() {
            Ok(mut m) => {
                let out = m.finish();
                wit::Metered { usage: out.usage.map(usage), model: out.model, completed: out.completed, content_bytes: out.content_bytes }
            }
            Err(_) => wit::Metered { usage: None, model: None, completed: false, content_bytes: 0 },
        }
    }
}

export!(Component);
