//! Quorum math as pure functions: majority configurations and joint
//! configurations (a majority of *both* halves).

pub mod joint;
pub mod majority;

/// The outcome of counting votes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteResult {
    /// Neither a quorum of grants nor of rejections yet.
    Pending,
    /// A quorum rejected.
    Lost,
    /// A quorum granted.
    Won,
}
