//! A Markdown reference of a CRD, written from its OpenAPI schema.
//!
//! [`markdown`] is a pure function of a `CustomResourceDefinition`: it walks the
//! `openAPIV3Schema` of the served version and writes one section per object
//! (`spec`, `spec.postgres`, `spec.tables[]`, `status`, …), each a table of its
//! fields (type and constraints, whether it is required, the description, which
//! is the doc comment of the Rust field) followed by the CEL rules checked there.
//! Properties come in the schema's order, which k8s-openapi keeps sorted, so the
//! same CRD always gives the same bytes.
//!
//! `docs/crd-reference.md` is [`document`]'s output, written by `make crd`
//! (`crdgen --reference`); a test fails when the checked-in file is stale.

use std::collections::{HashMap, HashSet};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
    CustomResourceDefinitionVersion, JSONSchemaProps, JSONSchemaPropsOrArray,
    JSONSchemaPropsOrBool, ValidationRule,
};
use kube::CustomResourceExt;

use crate::PostgresCapture;

/// The reference of the `PostgresCapture` CRD, exactly as
/// `docs/crd-reference.md` holds it.
pub fn document() -> String {
    markdown(&PostgresCapture::crd())
}

/// Renders the reference of `crd`: its names and printer columns, then a
/// section per object of the served version's schema.
pub fn markdown(crd: &CustomResourceDefinition) -> String {
    let spec = &crd.spec;
    let kind = spec.names.kind.as_str();
    let version = documented_version(&spec.versions);
    let root = version
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref());

    let mut anchors = Anchors::default();
    anchors.add(&format!("{kind} reference"));
    anchors.add("Resource");
    let columns = version
        .and_then(|v| v.additional_printer_columns.as_deref())
        .unwrap_or_default();
    if !columns.is_empty() {
        anchors.add("Printer columns");
    }
    anchors.add("Fields");
    let mut sections = Vec::new();
    if let Some(root) = root {
        collect(String::new(), 0, root, &mut sections);
    }
    let links: HashMap<String, String> = sections
        .iter()
        .map(|s| (s.path.clone(), anchors.add(s.title(kind))))
        .collect();

    let mut out = Out::default();
    intro(&mut out, crd, version);
    if !columns.is_empty() {
        printer_columns(&mut out, crd, columns);
    }
    out.line("## Fields");
    out.blank();
    if sections.is_empty() {
        out.line("The served version has no schema.");
        out.blank();
    }
    for section in &sections {
        let indent = "  ".repeat(section.depth);
        let title = section.title(kind);
        out.line(&format!(
            "{indent}- [{}](#{})",
            code(title),
            links[&section.path]
        ));
    }
    if !sections.is_empty() {
        out.blank();
    }
    for section in &sections {
        object_section(&mut out, kind, section, &links);
    }
    out.finish()
}

/// The version a reader meets: the served storage version, else the first
/// served one.
fn documented_version(
    versions: &[CustomResourceDefinitionVersion],
) -> Option<&CustomResourceDefinitionVersion> {
    versions
        .iter()
        .find(|v| v.served && v.storage)
        .or_else(|| versions.iter().find(|v| v.served))
}

/// What `kubectl` is typed with: the first short name, else the plural.
fn short_name(names: &CustomResourceDefinitionNames) -> &str {
    names
        .short_names
        .as_ref()
        .and_then(|s| s.first())
        .unwrap_or(&names.plural)
}

fn intro(
    out: &mut Out,
    crd: &CustomResourceDefinition,
    version: Option<&CustomResourceDefinitionVersion>,
) {
    let spec = &crd.spec;
    let names = &spec.names;
    let kind = names.kind.as_str();
    let api_version = match version {
        Some(v) => format!("{}/{}", spec.group, v.name),
        None => spec.group.clone(),
    };
    let short = short_name(names);

    out.line(&format!("# {kind} reference"));
    out.blank();
    out.line("<!-- Generated from the CRD by `make crd` (`cargo run -p siphon-crds --bin crdgen -- --reference`); do not edit by hand. -->");
    out.blank();
    out.line(&format!(
        "Every field of the `{kind}` resource (`{api_version}`), written from the \
         CRD's OpenAPI schema, so it says what the API server accepts. The \
         descriptions are the doc comments of the Rust types in `crds/src/`."
    ));
    out.blank();
    out.line(
        "Each object has a section named by its path (`spec.postgres`); `[]` \
         marks the items of a list (`spec.tables[]`) and `.*` the values of a map. \
         The type of a field that is an object links to its section. A required \
         field must be set whenever its object is; a default is what the API server \
         writes when the field is left out of an object that is present. \
         Validation rules are CEL expressions the API server checks on create and \
         update (`self` is the value the rule is attached to, `oldSelf` its \
         previous version); a change that breaks one is refused with its message.",
    );
    out.blank();
    out.line(&format!(
        "The cluster serves the same descriptions: `kubectl explain {short}.spec`, \
         `kubectl explain {short}.spec.postgres`, or `kubectl explain {short} --recursive` \
         for the whole tree."
    ));
    out.blank();

    out.line("## Resource");
    out.blank();
    out.line(&format!("- API version: `{api_version}`"));
    out.line(&format!("- Kind: `{kind}`, scope: {}", spec.scope));
    let mut naming = format!(
        "- Names: plural `{}`, singular `{}`",
        names.plural,
        names.singular.as_deref().unwrap_or_default()
    );
    if let Some(short_names) = names.short_names.as_ref().filter(|s| !s.is_empty()) {
        naming.push_str(&format!(", short names {}", code_list(short_names)));
    }
    out.line(&naming);
    if let Some(categories) = names.categories.as_ref().filter(|c| !c.is_empty()) {
        out.line(&format!(
            "- Categories: {} (`kubectl get {}` lists it)",
            code_list(categories),
            categories[0]
        ));
    }
    if let Some(sub) = version.and_then(|v| v.subresources.as_ref()) {
        let mut listed = Vec::new();
        if sub.status.is_some() {
            listed.push("status".to_string());
        }
        if sub.scale.is_some() {
            listed.push("scale".to_string());
        }
        if !listed.is_empty() {
            out.line(&format!("- Subresources: {}", code_list(&listed)));
        }
    }
    let versions: Vec<String> = spec
        .versions
        .iter()
        .map(|v| {
            let mut roles = Vec::new();
            if v.served {
                roles.push("served");
            }
            if v.storage {
                roles.push("storage");
            }
            if v.deprecated == Some(true) {
                roles.push("deprecated");
            }
            if roles.is_empty() {
                code(&v.name)
            } else {
                format!("{} ({})", code(&v.name), roles.join(", "))
            }
        })
        .collect();
    out.line(&format!("- Versions: {}", versions.join(", ")));
    out.blank();
}

fn printer_columns(
    out: &mut Out,
    crd: &CustomResourceDefinition,
    columns: &[CustomResourceColumnDefinition],
) {
    let names = &crd.spec.names;
    let short = short_name(names);
    let described = columns.iter().any(|c| c.description.is_some());
    out.line("## Printer columns");
    out.blank();
    out.line(&format!(
        "`kubectl get {short}` shows these columns (those marked `-o wide` only with `kubectl get {short} -o wide`):"
    ));
    out.blank();
    if described {
        out.line("| Column | Type | JSONPath | Description |");
        out.line("|---|---|---|---|");
    } else {
        out.line("| Column | Type | JSONPath |");
        out.line("|---|---|---|");
    }
    for column in columns {
        let mut name = cell(&column.name);
        if column.priority.unwrap_or(0) > 0 {
            name.push_str(" (`-o wide`)");
        }
        let mut ty = code(&column.type_);
        if let Some(format) = &column.format {
            ty.push_str(&format!(" ({})", cell(format)));
        }
        let path = code(&column.json_path);
        if described {
            let description = column.description.as_deref().map(cell).unwrap_or_default();
            out.line(&format!("| {name} | {ty} | {path} | {description} |"));
        } else {
            out.line(&format!("| {name} | {ty} | {path} |"));
        }
    }
    out.blank();
}

/// An object of the schema with a section of its own.
struct Section<'a> {
    /// `spec.tables[]`; empty for the root object.
    path: String,
    /// How deep it sits under the root (the root is 0).
    depth: usize,
    schema: &'a JSONSchemaProps,
}

impl Section<'_> {
    fn title<'k>(&'k self, kind: &'k str) -> &'k str {
        if self.path.is_empty() {
            kind
        } else {
            &self.path
        }
    }
}

/// Sections of `schema` and every object under it, depth first in schema order.
fn collect<'a>(
    path: String,
    depth: usize,
    schema: &'a JSONSchemaProps,
    out: &mut Vec<Section<'a>>,
) {
    let children: Vec<(String, &JSONSchemaProps)> = properties(schema)
        .filter_map(|(name, child)| nested_object(join(&path, name), child))
        .collect();
    out.push(Section {
        path,
        depth,
        schema,
    });
    for (child_path, child) in children {
        collect(child_path, depth + 1, child, out);
    }
}

fn properties(schema: &JSONSchemaProps) -> impl Iterator<Item = (&String, &JSONSchemaProps)> {
    schema.properties.iter().flatten()
}

fn has_properties(schema: &JSONSchemaProps) -> bool {
    schema.properties.as_ref().is_some_and(|p| !p.is_empty())
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

/// What a list holds (`[]`) or a map maps to (`.*`).
fn inner(schema: &JSONSchemaProps) -> Option<(&'static str, &JSONSchemaProps)> {
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = &schema.items {
        return Some(("[]", items));
    }
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = &schema.additional_properties {
        return Some((".*", values));
    }
    None
}

/// The object a field leads to, through lists and maps, with its path, when
/// that object has fields (and so a section) of its own.
fn nested_object(path: String, schema: &JSONSchemaProps) -> Option<(String, &JSONSchemaProps)> {
    if has_properties(schema) {
        return Some((path, schema));
    }
    let (suffix, next) = inner(schema)?;
    nested_object(path + suffix, next)
}

fn object_section(
    out: &mut Out,
    kind: &str,
    section: &Section<'_>,
    links: &HashMap<String, String>,
) {
    let schema = section.schema;
    out.line(&format!("### {}", code(section.title(kind))));
    out.blank();
    if let Some(description) = &schema.description {
        for paragraph in paragraphs(description) {
            out.line(&escape(&paragraph, false));
            out.blank();
        }
    }
    let required: HashSet<&str> = schema
        .required
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    out.line("| Field | Type | Required | Description |");
    out.line("|---|---|---|---|");
    for (name, child) in properties(schema) {
        let mut ty = code(&type_name(child));
        if let Some(format) = &leaf(child).format {
            ty.push_str(&format!(" ({})", cell(format)));
        }
        if let Some((path, _)) = nested_object(join(&section.path, name), child) {
            ty.push_str(&format!(" ([{}](#{}))", code(&path), links[&path]));
        }
        for constraint in constraints(child) {
            ty.push_str("<br>");
            ty.push_str(&constraint);
        }
        let req = if required.contains(name.as_str()) {
            "yes"
        } else {
            "no"
        };
        let description = child.description.as_deref().map(cell).unwrap_or_default();
        out.line(&format!(
            "| {} | {ty} | {req} | {description} |",
            code(name)
        ));
    }
    out.blank();

    let rules = section_rules(section);
    if !rules.is_empty() {
        out.line("Validation rules:");
        out.blank();
        out.line("| `self` | Rule | Message |");
        out.line("|---|---|---|");
        for (on, rule) in rules {
            let target = if on.is_empty() { kind } else { on.as_str() };
            out.line(&format!(
                "| {} | {} | {} |",
                code(target),
                code(&rule.rule),
                rule_message(&on, rule)
            ));
        }
        out.blank();
    }
}

/// The rules a section lists: the object's own, and those of its fields that
/// have no section of their own (a list of objects keeps the list's rules here
/// and its items' rules in the items' section).
fn section_rules<'a>(section: &Section<'a>) -> Vec<(String, &'a ValidationRule)> {
    let mut rules = attached(&section.path, section.schema);
    for (name, child) in properties(section.schema) {
        let mut path = join(&section.path, name);
        let mut node = child;
        while !has_properties(node) {
            rules.extend(attached(&path, node));
            match inner(node) {
                Some((suffix, next)) => {
                    path.push_str(suffix);
                    node = next;
                }
                None => break,
            }
        }
    }
    rules
}

fn attached<'a>(path: &str, schema: &'a JSONSchemaProps) -> Vec<(String, &'a ValidationRule)> {
    schema
        .x_kubernetes_validations
        .iter()
        .flatten()
        .map(|rule| (path.to_string(), rule))
        .collect()
}

fn rule_message(on: &str, rule: &ValidationRule) -> String {
    let mut message = match (&rule.message, &rule.message_expression) {
        (_, Some(expression)) => format!("{} (CEL)", code(expression)),
        (Some(message), None) => cell(message),
        (None, None) => "(the rule itself)".to_string(),
    };
    let mut notes = Vec::new();
    if let Some(field_path) = &rule.field_path {
        let reported = format!("{on}{field_path}");
        let reported = reported.strip_prefix('.').unwrap_or(&reported);
        notes.push(format!("reported at {}", code(reported)));
    }
    if let Some(reason) = &rule.reason {
        notes.push(format!("reason {}", code(reason)));
    }
    if rule.rule.contains("oldSelf") {
        if rule.optional_old_self == Some(true) {
            notes.push("also on create (`oldSelf` optional)".to_string());
        } else {
            notes.push("checked on update only".to_string());
        }
    }
    if !notes.is_empty() {
        message.push_str("<br>");
        message.push_str(&notes.join("; "));
    }
    message
}

/// `string`, `integer`, `[]string`, `map[string]string`, `object`, …
fn type_name(schema: &JSONSchemaProps) -> String {
    if schema.x_kubernetes_int_or_string == Some(true) {
        return "int-or-string".to_string();
    }
    match schema.type_.as_deref() {
        Some("array") => match &schema.items {
            Some(JSONSchemaPropsOrArray::Schema(items)) => format!("[]{}", type_name(items)),
            _ => "[]any".to_string(),
        },
        Some("object") if !has_properties(schema) => match &schema.additional_properties {
            Some(JSONSchemaPropsOrBool::Schema(values)) => {
                format!("map[string]{}", type_name(values))
            }
            Some(JSONSchemaPropsOrBool::Bool(true)) => "map[string]any".to_string(),
            _ => "object".to_string(),
        },
        Some(other) => other.to_string(),
        None => {
            let alternatives: Vec<String> = schema
                .any_of
                .iter()
                .chain(schema.one_of.iter())
                .flatten()
                .map(type_name)
                .collect();
            if alternatives.is_empty() {
                "any".to_string()
            } else {
                alternatives.join(" or ")
            }
        }
    }
}

/// The innermost value of a list or map that has no section of its own:
/// whose format the type column shows.
fn leaf(schema: &JSONSchemaProps) -> &JSONSchemaProps {
    match inner(schema) {
        Some((_, next)) if !has_properties(schema) => leaf(next),
        _ => schema,
    }
}

/// Enum values, default, bounds, pattern and list semantics of a field; for a
/// list or map of plain values, also those of its items or values.
fn constraints(schema: &JSONSchemaProps) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(values) = &schema.enum_ {
        let values: Vec<String> = values.iter().map(|v| value(&v.0)).collect();
        out.push(format!("one of: {}", values.join(", ")));
    }
    if let Some(default) = &schema.default {
        out.push(format!("default: {}", value(&default.0)));
    }
    if let Some(minimum) = schema.minimum {
        let word = if schema.exclusive_minimum == Some(true) {
            "greater than"
        } else {
            "minimum:"
        };
        out.push(format!("{word} `{}`", number(minimum)));
    }
    if let Some(maximum) = schema.maximum {
        let word = if schema.exclusive_maximum == Some(true) {
            "less than"
        } else {
            "maximum:"
        };
        out.push(format!("{word} `{}`", number(maximum)));
    }
    if let Some(step) = schema.multiple_of {
        out.push(format!("multiple of `{}`", number(step)));
    }
    let counts = [
        ("minLength", schema.min_length),
        ("maxLength", schema.max_length),
        ("minItems", schema.min_items),
        ("maxItems", schema.max_items),
        ("minProperties", schema.min_properties),
        ("maxProperties", schema.max_properties),
    ];
    for (keyword, count) in counts {
        if let Some(count) = count {
            out.push(format!("{keyword}: `{count}`"));
        }
    }
    if let Some(pattern) = &schema.pattern {
        out.push(format!("pattern: {}", code(pattern)));
    }
    if schema.unique_items == Some(true) {
        out.push("unique items".to_string());
    }
    if let Some(list_type) = &schema.x_kubernetes_list_type {
        let mut text = format!("list type: {}", code(list_type));
        if let Some(keys) = schema
            .x_kubernetes_list_map_keys
            .as_ref()
            .filter(|k| !k.is_empty())
        {
            text.push_str(&format!(", keyed by {}", code_list(keys)));
        }
        out.push(text);
    }
    if let Some(map_type) = &schema.x_kubernetes_map_type {
        out.push(format!("map type: {}", code(map_type)));
    }
    if schema.x_kubernetes_preserve_unknown_fields == Some(true) {
        out.push("unknown fields are kept".to_string());
    }
    if schema.x_kubernetes_embedded_resource == Some(true) {
        out.push("an embedded resource (`apiVersion`, `kind`, `metadata`)".to_string());
    }
    if !has_properties(schema)
        && let Some((suffix, next)) = inner(schema)
        && !has_properties(next)
    {
        let whose = if suffix == "[]" { "items" } else { "values" };
        out.extend(
            constraints(next)
                .into_iter()
                .map(|c| format!("{whose} {c}")),
        );
    }
    out
}

/// A JSON value as inline code: strings bare (`Delete`), everything else as
/// JSON (`5432`, `true`, `""`, `{}`).
fn value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => code(s),
        other => code(&other.to_string()),
    }
}

/// `1.0` as `1`; other numbers as Rust writes them.
fn number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

fn code_list(items: &[String]) -> String {
    items.iter().map(|i| code(i)).collect::<Vec<_>>().join(", ")
}

/// `text` as an inline code span that is safe in a table cell: fenced by more
/// backticks than it contains, on one line, with `|` escaped (GitHub's tables
/// take `\|` as a pipe inside code spans too).
fn code(text: &str) -> String {
    let text = text.replace(['\r', '\n'], " ");
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    let pad = if text.starts_with('`') || text.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{}{pad}{fence}", text.replace('|', "\\|"))
}

/// A description as one table cell: lines of a paragraph joined by spaces,
/// paragraphs by `<br><br>`, pipes and HTML escaped.
fn cell(text: &str) -> String {
    paragraphs(text)
        .iter()
        .map(|p| escape(p, true))
        .collect::<Vec<_>>()
        .join("<br><br>")
}

/// The paragraphs of a doc comment, each on one line.
fn paragraphs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            if !current.is_empty() {
                out.push(current.join(" "));
                current.clear();
            }
        } else {
            current.push(line);
        }
    }
    if !current.is_empty() {
        out.push(current.join(" "));
    }
    out
}

/// Escapes one line of prose for Markdown: a `<` outside code spans that could
/// open HTML becomes `&lt;` (so `<key,value>` stays text; `< 15` is left
/// alone), and in a table cell `|` becomes `\|` everywhere. A backtick run
/// without a matching closer is text.
fn escape(text: &str, in_table: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while let Some(c) = text[i..].chars().next() {
        match c {
            '`' => {
                let open = run_length(bytes, i);
                let end =
                    matching_run(bytes, i + open, open).map_or(i + open, |close| close + open);
                let span = &text[i..end];
                if in_table {
                    out.push_str(&span.replace('|', "\\|"));
                } else {
                    out.push_str(span);
                }
                i = end;
                continue;
            }
            '<' if opens_html(&text[i + 1..]) => out.push_str("&lt;"),
            '|' if in_table => out.push_str("\\|"),
            other => out.push(other),
        }
        i += c.len_utf8();
    }
    out
}

/// Whether what follows a `<` could make it raw HTML: a tag, a closing tag, a
/// comment or declaration, or a processing instruction.
fn opens_html(rest: &str) -> bool {
    rest.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '/' | '!' | '?'))
}

fn run_length(bytes: &[u8], start: usize) -> usize {
    bytes[start..].iter().take_while(|&&b| b == b'`').count()
}

/// Where a backtick run of exactly `len` starts at or after `from`.
fn matching_run(bytes: &[u8], from: usize, len: usize) -> Option<usize> {
    let mut i = from;
    while i < bytes.len() {
        if bytes[i] == b'`' {
            let run = run_length(bytes, i);
            if run == len {
                return Some(i);
            }
            i += run;
        } else {
            i += 1;
        }
    }
    None
}

/// Heading anchors the way GitHub makes them: lowercase, punctuation dropped,
/// spaces as `-`, and `-1`, `-2`, … for a repeated heading.
#[derive(Default)]
struct Anchors {
    taken: HashSet<String>,
}

impl Anchors {
    fn add(&mut self, heading: &str) -> String {
        let base: String = heading
            .chars()
            .flat_map(char::to_lowercase)
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut anchor = base.clone();
        let mut n = 0;
        while self.taken.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        self.taken.insert(anchor.clone());
        anchor
    }
}

/// The document being written, line by line.
#[derive(Default)]
struct Out(String);

impl Out {
    fn line(&mut self, text: &str) {
        self.0.push_str(text);
        self.0.push('\n');
    }

    fn blank(&mut self) {
        self.0.push('\n');
    }

    /// The text, ending in exactly one newline.
    fn finish(self) -> String {
        let mut text = self.0;
        while text.ends_with("\n\n") {
            text.pop();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in reference must match the types; regenerate with
    /// `make crd` (which runs `crdgen --reference`) when this fails.
    #[test]
    fn checked_in_reference_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/crd-reference.md");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        let rendered = document();
        assert!(
            !on_disk.is_empty(),
            "docs/crd-reference.md is missing: run `make crd` and commit the result"
        );
        if on_disk != rendered {
            let line = on_disk
                .lines()
                .zip(rendered.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| on_disk.lines().count().min(rendered.lines().count()));
            panic!(
                "docs/crd-reference.md is stale (first difference at line {}): run `make crd` and commit the result",
                line + 1
            );
        }
    }

    /// A small CRD by hand: an enum with a default, a required integer with
    /// bounds, a nested object, a list of objects, a list of enum values, a
    /// CEL rule, and a version that is not served.
    fn widget() -> CustomResourceDefinition {
        let schema = serde_json::json!({
            "type": "object",
            "description": "A widget.",
            "properties": {
                "spec": {
                    "type": "object",
                    "description": "Desired state.",
                    "required": ["size"],
                    "properties": {
                        "color": {
                            "type": "string",
                            "enum": ["red", "blue"],
                            "default": "red",
                            "description": "Paint (`a|b` or c|d),\nwrapped.\n\nSecond <b>paragraph</b>."
                        },
                        "size": {
                            "type": "integer",
                            "format": "int32",
                            "minimum": 1.0,
                            "maximum": 10.0,
                            "description": "How big."
                        },
                        "owner": {
                            "type": "object",
                            "description": "Who owns it.",
                            "properties": {
                                "name": { "type": "string", "pattern": "^[a-z]+$" }
                            }
                        },
                        "parts": {
                            "type": "array",
                            "x-kubernetes-list-type": "map",
                            "x-kubernetes-list-map-keys": ["id"],
                            "items": {
                                "type": "object",
                                "description": "One part.",
                                "required": ["id"],
                                "properties": { "id": { "type": "string" } }
                            }
                        },
                        "tags": {
                            "type": "array",
                            "items": { "type": "string", "enum": ["a", "b"] }
                        }
                    },
                    "x-kubernetes-validations": [
                        {
                            "rule": "self.size <= 5 || self.color == 'red'",
                            "message": "big widgets are red",
                            "fieldPath": ".color"
                        },
                        {
                            "rule": "self.size == oldSelf.size",
                            "message": "size is immutable"
                        }
                    ]
                }
            }
        });
        serde_json::from_value(serde_json::json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": { "name": "widgets.example.dev" },
            "spec": {
                "group": "example.dev",
                "names": {
                    "kind": "Widget",
                    "plural": "widgets",
                    "singular": "widget",
                    "shortNames": ["wd"]
                },
                "scope": "Namespaced",
                "versions": [
                    {
                        "name": "v1beta1",
                        "served": false,
                        "storage": false,
                        "schema": { "openAPIV3Schema": {
                            "type": "object",
                            "properties": { "legacyField": { "type": "string" } }
                        } }
                    },
                    {
                        "name": "v1",
                        "served": true,
                        "storage": true,
                        "additionalPrinterColumns": [
                            { "name": "Size", "type": "integer", "jsonPath": ".spec.size" },
                            { "name": "Owner", "type": "string", "jsonPath": ".spec.owner.name", "priority": 1 }
                        ],
                        "schema": { "openAPIV3Schema": schema }
                    }
                ]
            }
        }))
        .expect("the fixture is a CRD")
    }

    /// The text of the section headed `### `title``, up to the next section.
    fn section<'a>(doc: &'a str, title: &str) -> &'a str {
        let heading = format!("### `{title}`\n");
        let start = doc
            .find(&heading)
            .unwrap_or_else(|| panic!("no section {title} in:\n{doc}"));
        let body = &doc[start + heading.len()..];
        &body[..body.find("\n### ").unwrap_or(body.len())]
    }

    #[test]
    fn a_row_shows_type_constraints_required_and_description() {
        let doc = markdown(&widget());
        let spec = section(&doc, "spec");
        assert!(
            spec.contains(
                "| `size` | `integer` (int32)<br>minimum: `1`<br>maximum: `10` | yes | How big. |"
            ),
            "{spec}"
        );
        assert!(
            spec.contains(
                "| `color` | `string`<br>one of: `red`, `blue`<br>default: `red` | no | \
                 Paint (`a\\|b` or c\\|d), wrapped.<br><br>Second &lt;b>paragraph&lt;/b>. |"
            ),
            "{spec}"
        );
        assert!(
            spec.contains("| `tags` | `[]string`<br>items one of: `a`, `b` | no |"),
            "{spec}"
        );
    }

    #[test]
    fn nested_objects_and_list_items_get_linked_sections() {
        let doc = markdown(&widget());
        let spec = section(&doc, "spec");
        assert!(
            spec.contains(
                "| `owner` | `object` ([`spec.owner`](#specowner)) | no | Who owns it. |"
            ),
            "{spec}"
        );
        assert!(
            spec.contains(
                "| `parts` | `[]object` ([`spec.parts[]`](#specparts))<br>list type: `map`, keyed by `id` | no |"
            ),
            "{spec}"
        );
        let owner = section(&doc, "spec.owner");
        assert!(owner.starts_with("\nWho owns it.\n"), "{owner}");
        assert!(
            owner.contains("| `name` | `string`<br>pattern: `^[a-z]+$` | no |  |"),
            "{owner}"
        );
        let parts = section(&doc, "spec.parts[]");
        assert!(parts.contains("One part."), "{parts}");
        assert!(parts.contains("| `id` | `string` | yes |"), "{parts}");
        let root = section(&doc, "Widget");
        assert!(
            root.contains("| `spec` | `object` ([`spec`](#spec)) | no | Desired state. |"),
            "{root}"
        );
        let contents = doc.find("- [`Widget`](#widget)\n  - [`spec`](#spec)\n    - [`spec.owner`](#specowner)\n    - [`spec.parts[]`](#specparts)\n");
        assert!(contents.is_some(), "{doc}");
    }

    #[test]
    fn cel_rules_are_listed_under_their_object() {
        let doc = markdown(&widget());
        let spec = section(&doc, "spec");
        assert!(
            spec.contains(
                "| `spec` | `self.size <= 5 \\|\\| self.color == 'red'` | big widgets are red<br>reported at `spec.color` |"
            ),
            "{spec}"
        );
        assert!(
            spec.contains(
                "| `spec` | `self.size == oldSelf.size` | size is immutable<br>checked on update only |"
            ),
            "{spec}"
        );
        assert!(!section(&doc, "spec.owner").contains("Validation rules"));
    }

    #[test]
    fn names_and_printer_columns_come_first() {
        let doc = markdown(&widget());
        let fields = doc.find("## Fields").expect("a Fields heading");
        let head = &doc[..fields];
        assert!(head.starts_with("# Widget reference\n"), "{head}");
        assert!(head.contains("short names `wd`"), "{head}");
        assert!(head.contains("`kubectl explain wd.spec`"), "{head}");
        assert!(
            head.contains("| Size | `integer` | `.spec.size` |"),
            "{head}"
        );
        assert!(
            head.contains("| Owner (`-o wide`) | `string` | `.spec.owner.name` |"),
            "{head}"
        );
    }

    #[test]
    fn only_the_served_version_is_documented_and_output_is_stable() {
        let crd = widget();
        let doc = markdown(&crd);
        assert!(doc.contains("`example.dev/v1`"), "{doc}");
        assert!(!doc.contains("legacyField"), "{doc}");
        assert_eq!(doc, markdown(&crd));
        assert!(doc.ends_with("|\n") && !doc.ends_with("\n\n"));
    }

    #[test]
    fn prose_escaping_keeps_code_spans() {
        assert_eq!(escape("a | b `c | d`", true), "a \\| b `c \\| d`");
        assert_eq!(escape("a | b", false), "a | b");
        assert_eq!(
            escape("<key,value> `<x>` < 15", false),
            "&lt;key,value> `<x>` < 15"
        );
        assert_eq!(escape("odd ` tick <b>", false), "odd ` tick &lt;b>");
        assert_eq!(code("a`b"), "``a`b``");
        assert_eq!(code("x|y\nz"), "`x\\|y z`");
        assert_eq!(cell("one\n  two\n\n\nthree"), "one two<br><br>three");
    }

    #[test]
    fn repeated_headings_get_numbered_anchors() {
        let mut anchors = Anchors::default();
        assert_eq!(anchors.add("spec.tables[]"), "spectables");
        assert_eq!(anchors.add("Printer columns"), "printer-columns");
        assert_eq!(anchors.add("spec.tables"), "spectables-1");
    }
}
