//! `blockfault schema`: the scenario format as a draft-07 JSON Schema (what yaml-language-server reads).

use crate::scenario::Scenario;

pub fn json() -> String {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let schema = generator.into_root_schema_for::<Scenario>();
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema is plain JSON");
    text.push('\n');
    text
}
