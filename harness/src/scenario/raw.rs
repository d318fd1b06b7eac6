//! The scenario file as written: serde types that keep the byte span of every value.
//!
//! Strings stay strings here (durations, paths, enum words), because `{name}` placeholders are
//! substituted before they are interpreted; [`super::model`] does both and reports problems at
//! the spans kept here.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use toml::Spanned;

/// A whole scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawScenario {
    pub name: Spanned<String>,
    pub description: Spanned<String>,
    pub boards: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub requires: Vec<Spanned<String>>,
    #[serde(default)]
    pub params: BTreeMap<String, Spanned<RawParam>>,
    #[serde(default)]
    pub step: Vec<Spanned<RawStep>>,
}

/// A parameter: one value, or a matrix of values (the scenario runs once per value).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawParam {
    One(String),
    Many(Vec<String>),
}

/// One `[[step]]` (or one entry of `repeat.steps`): an optional label and its kind keys.
///
/// Unknown keys are kept (as [`RawKind::Unknown`]) so that validation can point at the key
/// itself and list the valid kinds; serde's own "unknown field" error could only point at the
/// table.
#[derive(Debug)]
pub(crate) struct RawStep {
    pub label: Option<Spanned<String>>,
    pub kinds: Vec<(Spanned<String>, RawKind)>,
}

#[derive(Debug)]
pub(crate) enum RawKind {
    Power(Spanned<String>),
    Button(Spanned<RawButton>),
    Flash(Spanned<RawFlash>),
    WaitBoot(Spanned<RawTimeout>),
    ExpectLine(Spanned<RawExpectLine>),
    ExpectIdentity(Spanned<RawExpectIdentity>),
    EnterUpdate(Spanned<RawTimeout>),
    Ota(Spanned<RawOta>),
    ExpectOtaRefused(Spanned<RawOtaRefused>),
    ExpectLintRefusal(Spanned<RawLintRefusal>),
    ExpectTriage(Spanned<RawTriage>),
    Wait(Spanned<String>),
    Repeat(Spanned<RawRepeat>),
    Unknown,
}

/// The step kinds, as their keys.
pub(crate) const STEP_KINDS: [&str; 13] = [
    "power",
    "button",
    "flash",
    "wait_boot",
    "expect_line",
    "expect_identity",
    "enter_update",
    "ota",
    "expect_ota_refused",
    "expect_lint_refusal",
    "expect_triage",
    "wait",
    "repeat",
];

impl<'de> Deserialize<'de> for RawStep {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct StepVisitor;
        impl<'de> Visitor<'de> for StepVisitor {
            type Value = RawStep;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a step table such as `power = \"cycle\"`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawStep, A::Error> {
                let mut step = RawStep {
                    label: None,
                    kinds: Vec::new(),
                };
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    let kind = match key.get_ref().as_str() {
                        "label" => {
                            step.label = Some(map.next_value()?);
                            continue;
                        }
                        "power" => RawKind::Power(map.next_value()?),
                        "button" => RawKind::Button(map.next_value()?),
                        "flash" => RawKind::Flash(map.next_value()?),
                        "wait_boot" => RawKind::WaitBoot(map.next_value()?),
                        "expect_line" => RawKind::ExpectLine(map.next_value()?),
                        "expect_identity" => RawKind::ExpectIdentity(map.next_value()?),
                        "enter_update" => RawKind::EnterUpdate(map.next_value()?),
                        "ota" => RawKind::Ota(map.next_value()?),
                        "expect_ota_refused" => RawKind::ExpectOtaRefused(map.next_value()?),
                        "expect_lint_refusal" => RawKind::ExpectLintRefusal(map.next_value()?),
                        "expect_triage" => RawKind::ExpectTriage(map.next_value()?),
                        "wait" => RawKind::Wait(map.next_value()?),
                        "repeat" => RawKind::Repeat(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            RawKind::Unknown
                        }
                    };
                    step.kinds.push((key, kind));
                }
                Ok(step)
            }
        }
        d.deserialize_map(StepVisitor)
    }
}

/// `button = "press"` or `button = { hold = "3s" }`.
#[derive(Debug)]
pub(crate) enum RawButton {
    Word(String),
    Hold(RawHold),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHold {
    pub hold: Spanned<String>,
}

/// `expect_triage = "class"` or `expect_triage = { class = "...", since = "label" }`.
#[derive(Debug)]
pub(crate) enum RawTriage {
    Class(String),
    Table(RawTriageTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTriageTable {
    pub class: Spanned<String>,
    pub since: Option<Spanned<String>>,
}

/// Deserializes "a string, or a table" without buffering, so the table keeps its spans.
macro_rules! string_or_table {
    ($ty:ident, $word:ident, $table:ident, $tablety:ty, $what:literal) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        Ok($ty::$word(v.to_string()))
                    }
                    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<$ty, A::Error> {
                        <$tablety>::deserialize(MapAccessDeserializer::new(map)).map($ty::$table)
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

string_or_table!(
    RawButton,
    Word,
    Hold,
    RawHold,
    "\"press\" or a table such as { hold = \"3s\" }"
);
string_or_table!(
    RawTriage,
    Class,
    Table,
    RawTriageTable,
    "a triage class id or a table such as { class = \"healthy-boot\", since = \"label\" }"
);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFlash {
    pub image: Spanned<String>,
    pub power_cycle_after: Option<Spanned<bool>>,
    pub force: Option<Spanned<bool>>,
}

/// Steps whose only setting is an optional timeout (`wait_boot`, `enter_update`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeout {
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExpectLine {
    pub contains: Spanned<String>,
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExpectIdentity {
    pub app: Option<Spanned<String>>,
    pub version: Option<Spanned<String>>,
    pub ota: Option<Spanned<String>>,
    pub state: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOta {
    pub method: Spanned<String>,
    pub image: Spanned<String>,
    pub password_env: Option<Spanned<String>>,
    pub force: Option<Spanned<bool>>,
    pub second: Option<Spanned<RawSecondUpload>>,
}

/// `ota.second`: a second uploader that starts while the step's upload runs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSecondUpload {
    pub image: Spanned<String>,
    pub password_env: Option<Spanned<String>>,
    pub from: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOtaRefused {
    pub method: Spanned<String>,
    pub image: Spanned<String>,
    pub reason: Spanned<String>,
    pub code: Option<Spanned<u8>>,
    pub password_env: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLintRefusal {
    pub image: Spanned<String>,
    pub lint: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRepeat {
    pub times: Spanned<u32>,
    pub steps: Vec<Spanned<RawStep>>,
}
