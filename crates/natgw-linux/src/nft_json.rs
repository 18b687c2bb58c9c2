//! nftables read back as JSON (`nft -j list ruleset`), typed with the `nftables`
//! crate's schema. Read-only; natgw's writes go through `nft`.

use std::process::{Command, Stdio};

use nftables::schema::{NfObject, Nftables};

#[derive(Debug, thiserror::Error)]
pub enum NftJsonError {
    #[error("the nft tool is not installed")]
    Missing,
    #[error("cannot run {tool}")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nft -j list ruleset failed: {stderr}")]
    Failed { stderr: String },
    #[error("nft -j list ruleset printed no JSON document")]
    Json(#[source] serde_json::Error),
}

/// `nft -j list ruleset`, with the binary natgw uses (`$NATGW_NFT` or found on PATH).
pub fn list_ruleset() -> Result<Nftables<'static>, NftJsonError> {
    let nft = crate::nft::binary().ok_or(NftJsonError::Missing)?;
    let out = Command::new(&nft)
        .args(["-j", "list", "ruleset"])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NftJsonError::Spawn {
            tool: nft.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(NftJsonError::Failed {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    parse_ruleset(&String::from_utf8_lossy(&out.stdout))
}

/// Parses a ruleset object by object: an object this version of the schema cannot
/// type (a newer nft's statement, say) is kept as far as possible instead of failing
/// the whole ruleset. A rule keeps its place with the statements it cannot type made
/// opaque `xt` statements, as nft itself does for what its JSON cannot express; any
/// other such object is left out.
pub fn parse_ruleset(json: &str) -> Result<Nftables<'static>, NftJsonError> {
    #[derive(serde::Deserialize)]
    struct Document {
        nftables: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_str(json).map_err(NftJsonError::Json)?;
    let objects: Vec<NfObject<'static>> = document
        .nftables
        .into_iter()
        .filter_map(|value| {
            serde_json::from_value(value.clone())
                .ok()
                .or_else(|| serde_json::from_value(with_opaque_statements(value)).ok())
        })
        .collect();
    Ok(Nftables {
        objects: objects.into(),
    })
}

/// `{"rule": {..., "expr": [...]}}` with every statement the schema cannot type
/// replaced by `{"xt": {"type": "unknown", "name": KEY}}`.
fn with_opaque_statements(mut value: serde_json::Value) -> serde_json::Value {
    if let Some(expr) = value
        .get_mut("rule")
        .and_then(|r| r.get_mut("expr"))
        .and_then(|e| e.as_array_mut())
    {
        for statement in expr.iter_mut() {
            let typed: Result<nftables::stmt::Statement, _> =
                serde_json::from_value(statement.clone());
            if typed.is_err() {
                let key = statement
                    .as_object()
                    .and_then(|o| o.keys().next().cloned())
                    .unwrap_or_default();
                *statement = serde_json::json!({ "xt": { "type": "unknown", "name": key } });
            }
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use nftables::schema::NfListObject;
    use nftables::stmt::Statement;

    #[test]
    fn a_statement_the_schema_cannot_type_keeps_its_rule() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "ip", "name": "t", "handle": 1}}, {"chain": {"family": "ip", "table": "t", "name": "c", "handle": 1}}, {"rule": {"family": "ip", "table": "t", "chain": "c", "handle": 2, "expr": [{"frobnicate": {"level": 9}}, {"drop": null}]}}, {"flowtable": {"bogus": true}}]}"#;
        let ruleset = parse_ruleset(json).unwrap();
        let rule = ruleset
            .objects
            .iter()
            .find_map(|o| match o {
                NfObject::ListObject(NfListObject::Rule(r)) => Some(r),
                _ => None,
            })
            .expect("the rule is kept");
        assert!(matches!(rule.expr[0], Statement::XT(_)));
        assert!(matches!(rule.expr[1], Statement::Drop(_)));
        assert_eq!(ruleset.objects.len(), 4, "the broken flowtable is left out");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(
            parse_ruleset("Error: syntax"),
            Err(NftJsonError::Json(_))
        ));
    }
}
