//! The reason tables of the docs (`docs/model.md`, `docs/modeldeployment.md`, section "Conditions and
//! reasons"), read as the tests' expectations: a test names a reason, the table says what kstatus and
//! Argo CD answer for it. The tables are the contract; nothing of them is copied into the tests.

use std::path::Path;

use super::kstatus::KStatus;

/// The verdicts a table row gives.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdicts {
    pub kstatus: KStatus,
    pub argo: String,
}

/// One row of a reason table: the keys it names (every backticked word of its first cell) and its verdicts.
#[derive(Clone, Debug)]
pub struct TableRow {
    pub keys: Vec<String>,
    pub verdicts: Verdicts,
}

/// The reason table of `page` (relative to the repository) under the heading "Conditions and reasons".
pub fn read(page: &str) -> Result<Vec<TableRow>, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(page);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{page}: {e}"))
}

/// The first table after the heading "## Conditions and reasons" whose header has `kstatus` and `Argo CD`.
pub fn parse(markdown: &str) -> Result<Vec<TableRow>, String> {
    let section = markdown
        .split("\n## ")
        .find(|s| s.starts_with("Conditions and reasons"))
        .ok_or("no section \"Conditions and reasons\"")?;
    let mut lines = section.lines().skip_while(|l| !l.starts_with('|'));
    let header = cells(lines.next().ok_or("no table")?);
    let column = |name: &str| header.iter().position(|h| h == name).ok_or(format!("no column {name:?}"));
    let (k, a) = (column("kstatus")?, column("Argo CD")?);
    lines.next(); // |---|
    let mut rows = Vec::new();
    for line in lines.take_while(|l| l.starts_with('|')) {
        let row = cells(line);
        let cell = |i: usize| row.get(i).map(String::as_str).ok_or(format!("short row: {line}"));
        let keys: Vec<String> = cell(0)?.split('`').skip(1).step_by(2).map(str::to_owned).collect();
        if keys.is_empty() {
            return Err(format!("a row names no reason: {line}"));
        }
        let kstatus = kstatus_of(cell(k)?).ok_or(format!("no kstatus verdict in {line}"))?;
        let argo = cell(a)?.split_whitespace().next().ok_or(format!("no Argo CD verdict in {line}"))?;
        rows.push(TableRow { keys, verdicts: Verdicts { kstatus, argo: argo.to_owned() } });
    }
    Ok(rows)
}

/// What the table says for `keys`: the row naming exactly these keys, or else every row naming all of
/// them, which must agree (`InvalidSecret` has a row of its own; `Deployed` alone is both in sync and
/// suspended, so it needs `InSync`; `NodesNotReady` alone is the first rollout's row).
pub fn verdicts(rows: &[TableRow], keys: &[&str]) -> Result<Verdicts, String> {
    let exact = |r: &&TableRow| r.keys.len() == keys.len() && keys.iter().all(|key| r.keys.iter().any(|k| k == key));
    if let Some(row) = rows.iter().find(exact) {
        return Ok(row.verdicts.clone());
    }
    let names = |r: &&TableRow| keys.iter().all(|key| r.keys.iter().any(|k| k == key));
    let mut found = rows.iter().filter(names).map(|r| &r.verdicts);
    let first = found.next().ok_or(format!("no row names {keys:?}"))?;
    match found.find(|v| *v != first) {
        Some(other) => Err(format!("rows naming {keys:?} disagree: {first:?} and {other:?}")),
        None => Ok(first.clone()),
    }
}

/// [`verdicts`] of `page`'s table, for a test that holds one row: panics naming what is wrong.
pub fn expect(page: &str, keys: &[&str]) -> Verdicts {
    read(page).and_then(|rows| verdicts(&rows, keys)).unwrap_or_else(|e| panic!("{e}"))
}

fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(|c| c.trim().to_owned()).collect()
}

/// The first kstatus word in a cell ("**InProgress**", "the last status's (Current after …)").
fn kstatus_of(cell: &str) -> Option<KStatus> {
    let words = cell.split(|c: char| !c.is_ascii_alphabetic());
    words.into_iter().find_map(|w| match w {
        "Current" => Some(KStatus::Current),
        "InProgress" => Some(KStatus::InProgress),
        "Failed" => Some(KStatus::Failed),
        "Terminating" => Some(KStatus::Terminating),
        _ => None,
    })
}
