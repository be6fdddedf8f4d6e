//! The funnel model's dense parameters: the flat buffer workers all-reduce (DESIGN §5) and its
//! optimizer. Towers and the funnel loss follow.
//!
//! - [`params`]: the flat buffer's layout (names, shapes, order, layout hash) and its init.
//! - [`optim`]: Adam / Adagrad / SGD on the flat buffer.

pub mod optim;
pub mod params;

pub use optim::DenseOptim;
pub use params::{ParamLayout, ParamSpec};
