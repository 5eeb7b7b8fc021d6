//! Output as kubectl prints it: aligned columns under upper-case headers,
//! ages such as `5m` or `3d`, label selectors as `app=orders`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;

/// A table printed as kubectl does: columns three spaces apart.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: vec![],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table with every line indented by `indent` spaces.
    pub fn render(&self, indent: usize) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut text = " ".repeat(indent);
            for (i, cell) in line.iter().enumerate() {
                if i + 1 == line.len() {
                    text.push_str(cell);
                } else {
                    let pad = widths[i] - cell.chars().count() + 3;
                    text.push_str(cell);
                    text.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// How long ago `time` was, as kubectl prints ages: `45s`, `5m`, `3h`,
/// `12d`; `<none>` when unknown.
pub fn age(time: Option<&Time>) -> String {
    match time {
        Some(t) => age_since(t.0, Timestamp::now()),
        None => "<none>".into(),
    }
}

pub fn age_since(then: Timestamp, now: Timestamp) -> String {
    let secs = now.as_second().saturating_sub(then.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// A label selector as `kubectl get -l` takes it: `app=orders,tier in (a,b)`.
pub fn selector(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => format!("{} {other} ({values})", e.key),
        });
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

/// `value` or kubectl's `<none>`.
pub fn or_none(value: Option<String>) -> String {
    value
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "<none>".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_three_spaces_apart() {
        let mut t = Table::new(&["NAME", "PHASE"]);
        t.row(vec!["orders".into(), "Ready".into()]);
        t.row(vec!["a".into(), "".into()]);
        assert_eq!(t.render(0), "NAME     PHASE\norders   Ready\na\n");
        assert_eq!(t.render(2), "  NAME     PHASE\n  orders   Ready\n  a\n");
    }

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        let now: Timestamp = "2026-01-10T00:00:00Z".parse().unwrap();
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        assert_eq!(age_since(at("2026-01-09T23:59:15Z"), now), "45s");
        assert_eq!(age_since(at("2026-01-09T23:55:00Z"), now), "5m");
        assert_eq!(age_since(at("2026-01-09T21:00:00Z"), now), "3h");
        assert_eq!(age_since(at("2026-01-01T00:00:00Z"), now), "9d");
        assert_eq!(age_since(at("2026-01-11T00:00:00Z"), now), "0s");
        assert_eq!(age(None), "<none>");
    }

    #[test]
    fn selectors_read_as_kubectl_takes_them() {
        let s: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "orders"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                 {"key": "canary", "operator": "DoesNotExist"}]
        }))
        .unwrap();
        assert_eq!(selector(&s), "app=orders,tier in (a,b),!canary");
        assert_eq!(selector(&LabelSelector::default()), "<none>");
    }
}
