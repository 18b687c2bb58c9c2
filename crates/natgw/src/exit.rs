//! Exit codes: 0 ok; 1 a problem was found or an operation failed; 2 usage or
//! configuration error (nothing was changed).

pub const OK: i32 = 0;
pub const PROBLEM: i32 = 1;
pub const USAGE: i32 = 2;

/// An error with the exit code it maps to.
pub struct Failure {
    pub code: i32,
    pub error: anyhow::Error,
}

pub fn usage(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: USAGE,
        error: error.into(),
    }
}

pub fn problem(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: PROBLEM,
        error: error.into(),
    }
}

pub type Result<T> = std::result::Result<T, Failure>;
