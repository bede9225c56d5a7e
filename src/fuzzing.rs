//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): thin doors to parsers
//! that have no public caller of their own. Not a stable API; see docs/FUZZING.md.

use crate::catalog::{CatalogProblem, Provider};
use crate::handlers::HandlerRegistry;

/// Parses one provider TOML file as [`crate::catalog::Catalog::load`] does for each file
/// of a drop-in folder: the provider, or the problem (file, line, column, message).
pub fn parse_provider(
    registry: &HandlerRegistry,
    file: &str,
    text: &str,
) -> Result<Provider, CatalogProblem> {
    crate::catalog::parse_provider_text(registry, file, text)
}
