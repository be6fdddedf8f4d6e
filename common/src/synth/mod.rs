//! Placeholder until the gen-data branch lands.
