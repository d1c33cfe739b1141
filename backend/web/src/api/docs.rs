//! `/api/docs`: a readable reference of the API, rendered on the server from
//! the OpenAPI description (no script, no external assets).

use actix_web::HttpResponse;
use askama::Template;
use serde_json::Value;

use super::error::ApiError;
use super::openapi::spec_json;

struct Param {
    name: String,
    location: String,
    required: bool,
    description: String,
}

struct Operation {
    method: String,
    path: String,
    anchor: String,
    summary: String,
    description: String,
    scopes: String,
    params: Vec<Param>,
    request: String,
    responses: Vec<(String, String, String)>,
}

struct Field {
    name: String,
    kind: String,
    required: bool,
    description: String,
}

struct Schema {
    name: String,
    description: String,
    fields: Vec<Field>,
}

struct Tag {
    name: String,
    description: String,
    operations: Vec<Operation>,
}

#[derive(Template)]
#[template(path = "api_docs.html")]
struct DocsPage {
    title: String,
    description: String,
    tags: Vec<Tag>,
    schemas: Vec<Schema>,
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn ref_name(v: &Value) -> Option<String> {
    v.get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
        .map(str::to_owned)
}

fn kind(v: &Value) -> String {
    if let Some(r) = ref_name(v) {
        return r;
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(list) = v.get(key).and_then(Value::as_array) {
            return list
                .iter()
                .map(kind)
                .filter(|k| k != "null")
                .collect::<Vec<_>>()
                .join(" | ");
        }
    }
    let base = match v.get("type") {
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" | "),
        Some(t) => s(t),
        None => "any".into(),
    };
    match (
        base.as_str(),
        v.get("items"),
        v.get("format").and_then(Value::as_str),
    ) {
        ("array", Some(items), _) => format!("array of {}", kind(items)),
        (_, _, Some(format)) => format!("{base} ({format})"),
        _ => base,
    }
}

fn operations(spec: &Value) -> Vec<(String, Operation)> {
    let mut out = Vec::new();
    let Some(paths) = spec.get("paths").and_then(Value::as_object) else {
        return out;
    };
    for (path, item) in paths {
        for method in ["get", "post", "patch", "put", "delete"] {
            let Some(op) = item.get(method) else { continue };
            let tag = op
                .get("tags")
                .and_then(|t| t.get(0))
                .map(s)
                .unwrap_or_default();
            let scopes = op
                .get("security")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|req| req.get("bearer").and_then(Value::as_array))
                .flatten()
                .map(s)
                .collect::<Vec<_>>()
                .join(", ");
            let params = op
                .get("parameters")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| Param {
                    name: s(&p["name"]),
                    location: s(&p["in"]),
                    required: p["required"].as_bool().unwrap_or(false),
                    description: s(&p["description"]),
                })
                .collect();
            let request = op
                .pointer("/requestBody/content/application~1json/schema")
                .map(kind)
                .unwrap_or_default();
            let mut responses: Vec<(String, String, String)> = op
                .get("responses")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter(|(code, _)| code.starts_with('2'))
                .map(|(code, r)| {
                    let body = r
                        .get("content")
                        .and_then(Value::as_object)
                        .map(|c| {
                            c.iter()
                                .map(|(ct, m)| format!("{} ({ct})", kind(&m["schema"])))
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default();
                    (code.clone(), s(&r["description"]), body)
                })
                .collect();
            responses.sort();
            let description = s(&op["description"]);
            out.push((
                tag,
                Operation {
                    method: method.to_uppercase(),
                    anchor: format!("{method}-{}", path.replace(['/', '{', '}'], "-")),
                    path: path.clone(),
                    summary: s(&op["summary"]),
                    description,
                    scopes,
                    params,
                    request,
                    responses,
                },
            ));
        }
    }
    out
}

fn schemas(spec: &Value) -> Vec<Schema> {
    let Some(all) = spec
        .pointer("/components/schemas")
        .and_then(Value::as_object)
    else {
        return vec![];
    };
    all.iter()
        .map(|(name, schema)| {
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let mut fields = Vec::new();
            let mut collect = |props: &serde_json::Map<String, Value>, required: &[&str]| {
                for (field, v) in props {
                    fields.push(Field {
                        name: field.clone(),
                        kind: kind(v),
                        required: required.contains(&field.as_str()),
                        description: s(&v["description"]),
                    });
                }
            };
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                collect(props, &required);
            }
            for part in schema
                .get("allOf")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let required: Vec<&str> = part
                    .get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                if let Some(props) = part.get("properties").and_then(Value::as_object) {
                    collect(props, &required);
                }
            }
            Schema {
                name: name.clone(),
                description: s(&schema["description"]),
                fields,
            }
        })
        .collect()
}

/// `GET /api/docs`.
pub(crate) async fn page() -> Result<HttpResponse, ApiError> {
    let spec: Value = serde_json::from_str(spec_json()).map_err(anyhow::Error::from)?;
    let mut tags: Vec<Tag> = spec
        .get("tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|t| Tag {
            name: s(&t["name"]),
            description: s(&t["description"]),
            operations: vec![],
        })
        .collect();
    for (tag, op) in operations(&spec) {
        match tags.iter_mut().find(|t| t.name == tag) {
            Some(t) => t.operations.push(op),
            None => tags.push(Tag {
                name: tag,
                description: String::new(),
                operations: vec![op],
            }),
        }
    }
    let body = DocsPage {
        title: s(&spec["info"]["title"]),
        description: s(&spec["info"]["description"]),
        tags,
        schemas: schemas(&spec),
    }
    .render()
    .map_err(anyhow::Error::from)?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(body))
}
