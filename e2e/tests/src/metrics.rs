//! Prometheus endpoints as a scraper sees them: one GET of `/metrics`, and
//! the value of one series in the text format.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The body of `GET http://{addr}/metrics` (text format, as a plain GET
/// without an Accept header gets it).
pub async fn scrape(addr: &str) -> String {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .unwrap_or_else(|_| panic!("GET http://{addr}/metrics timed out"))
        .unwrap_or_else(|e| panic!("GET http://{addr}/metrics: {e}"));
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("GET http://{addr}/metrics: no HTTP response: {response}"));
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "GET http://{addr}/metrics: {head}"
    );
    body.to_owned()
}

/// The value of the series `name{labels}` (labels exactly as the exposition
/// writes them, in its order; empty for none), if the text has it.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let series = if labels.is_empty() {
        name.to_owned()
    } else {
        let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        format!("{name}{{{}}}", inner.join(","))
    };
    text.lines().find_map(|line| {
        let value = line.strip_prefix(&series)?.strip_prefix(' ')?;
        value.split(' ').next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_found_by_its_exact_name_and_labels() {
        let text = "# TYPE a counter\na_total 3\na_total_more 9\nb{table=\"public.t\"} 1\nb{table=\"public.u\"} 0 1700000000\n";
        assert_eq!(sample(text, "a_total", &[]), Some(3.0));
        assert_eq!(sample(text, "b", &[("table", "public.t")]), Some(1.0));
        assert_eq!(sample(text, "b", &[("table", "public.u")]), Some(0.0));
        assert_eq!(sample(text, "b", &[("table", "public.v")]), None);
        assert_eq!(sample(text, "a", &[]), None);
    }
}
