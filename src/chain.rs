//! An error and its causes on one line, each cause said once. Errors here carry their cause in
//! their own text (status messages are written from `to_string()` alone), and so do those of kube
//! and its neighbours (`Kube error: {0}` over the same error as its source): a printer that appends
//! every source would say the deepest cause once per layer. This one appends a cause only when the
//! line does not already say it.

/// `error: cause: deeper cause`, skipping any cause whose text the line already holds.
pub fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("namespaces \"x\" not found")]
        NotFound,
    }

    #[derive(Debug, thiserror::Error)]
    enum Repeats {
        #[error("Kube error: {0}")]
        Kube(#[from] Inner),
    }

    #[derive(Debug, thiserror::Error)]
    enum Adds {
        #[error("leader election")]
        Lease(#[from] Repeats),
    }

    #[test]
    fn each_cause_is_said_once() {
        let e = Adds::Lease(Repeats::Kube(Inner::NotFound));
        assert_eq!(one_line(&e), "leader election: Kube error: namespaces \"x\" not found");
        let context = anyhow::Error::from(Repeats::Kube(Inner::NotFound)).context("starting");
        assert_eq!(one_line(context.as_ref()), "starting: Kube error: namespaces \"x\" not found");
    }
}
