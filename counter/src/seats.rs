//! Seats beside tokens: what a person's seats cost a month next to what their usage cost, per team
//! and role, against the spend band their class of work allows.
//!
//! Why: a seat budget ("an assistant seat is $39/user/month") and a usage budget are two halves of
//! one bill, reviewed together (users' article 003). A band per role ("deep coding:
//! $150-$400/user/month") says what normal looks like for that kind of work, so the review flags
//! the people **outside** it in either direction — below (a paid seat that is not used) as well as
//! above — instead of ranking anyone by spend.
//!
//! The config is one document (budgets file `"seats"`, or `PUT /admin/seats`), stored and audited
//! (`seats.create` / `seats.update`, subject `seats`) like a workflow:
//!
//! ```json
//! {"products": {"assistant": "39.00", "ide-agent": "19.00"},
//!  "roles": {"deep-coding": {"seats": ["assistant", "ide-agent"], "band": {"min": "150", "max": "400"}},
//!            "occasional": {"seats": ["assistant"], "band": {"min": "0", "max": "60"}}},
//!  "users": {"alice": {"team": "platform", "role": "deep-coding"}, "bob": {"team": "platform", "role": "occasional"}}}
//! ```
//!
//! A role's seat cost per user and month is the sum of its products' prices. Usage is the
//! ledger's spend of the user in the month (every team). A user's total is seats + usage; the band
//! applies to the total. Users with spend but no entry are shown under role `""` (no seat, no
//! band) in the team the ledger names, so nothing spent is left out.

use crate::budget::valid_id;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tollgate_core::money::{format_micros, parse_decimal_scaled, Micros};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Band {
    /// Dollars per user and month (decimal string).
    pub min: String,
    pub max: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    /// Products (keys of `products`) every user of the role holds a seat of.
    #[serde(default)]
    pub seats: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub band: Option<Band>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub team: String,
    pub role: String,
}

/// The seats document as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeatsSpec {
    /// Product -> dollars per user and month.
    #[serde(default)]
    pub products: BTreeMap<String, String>,
    #[serde(default)]
    pub roles: BTreeMap<String, RoleSpec>,
    #[serde(default)]
    pub users: BTreeMap<String, UserSpec>,
}

/// A validated seats config, figures parsed once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seats {
    pub spec: SeatsSpec,
    /// Role -> (seat cost per user and month, band (min, max)).
    pub roles: BTreeMap<String, (Micros, Option<(Micros, Micros)>)>,
}

fn dollars(field: &str, text: &str) -> Result<Micros, String> {
    parse_decimal_scaled(text, 6)
        .and_then(|m| Micros::try_from(m).ok())
        .filter(|m| *m >= 0)
        .ok_or_else(|| format!("{field}: `{text}` is not an amount of dollars; write a decimal such as \"39.00\""))
}

impl Seats {
    /// Validates a spec; errors read `<field>: <problem and fix>`.
    pub fn from_spec(spec: SeatsSpec) -> Result<Seats, String> {
        let mut prices = BTreeMap::new();
        for (name, price) in &spec.products {
            if !valid_id(name) {
                return Err(format!("products.{name}: not a product name (1-128 of A-Z a-z 0-9 . _ -)"));
            }
            prices.insert(name.clone(), dollars(&format!("products.{name}"), price)?);
        }
        let mut roles = BTreeMap::new();
        for (name, role) in &spec.roles {
            if !valid_id(name) {
                return Err(format!("roles.{name}: not a role name (1-128 of A-Z a-z 0-9 . _ -)"));
            }
            let mut seat: Micros = 0;
            for (i, p) in role.seats.iter().enumerate() {
                let price = prices.get(p).ok_or_else(|| format!("roles.{name}.seats[{i}]: `{p}` is not in products; add its price there first"))?;
                seat = seat.saturating_add(*price);
            }
            let band = match &role.band {
                None => None,
                Some(b) => {
                    let (min, max) = (dollars(&format!("roles.{name}.band.min"), &b.min)?, dollars(&format!("roles.{name}.band.max"), &b.max)?);
                    if max < min {
                        return Err(format!("roles.{name}.band.max: ${} is below min ${}; the band is min to max per user and month", b.max, b.min));
                    }
                    Some((min, max))
                }
            };
            roles.insert(name.clone(), (seat, band));
        }
        for (user, u) in &spec.users {
            if user.is_empty() || user.len() > 256 {
                return Err(format!("users.{user}: a user id is 1-256 characters, as the gateway attributes it"));
            }
            if !valid_id(&u.team) {
                return Err(format!("users.{user}.team: `{}` is not a team id (1-128 of A-Z a-z 0-9 . _ -)", u.team));
            }
            if !roles.contains_key(&u.role) {
                return Err(format!("users.{user}.role: `{}` is not in roles; define it (its seats and band) first", u.role));
            }
        }
        Ok(Seats { spec, roles })
    }
}

/// What storing the seats config did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutSeats {
    Created,
    Updated,
    /// Identical to the stored config: nothing written, nothing audited.
    Unchanged,
}

impl PutSeats {
    pub fn as_str(self) -> &'static str {
        match self {
            PutSeats::Created => "created",
            PutSeats::Updated => "updated",
            PutSeats::Unchanged => "unchanged",
        }
    }
}

/// One user outside the band of their role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutsideBand {
    pub user: String,
    /// `below` or `above`.
    pub direction: &'static str,
    pub seats_micros: Micros,
    pub usage_micros: Micros,
    pub total_micros: Micros,
}

/// One (team, role) of the seats report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TeamRoleRow {
    pub team: String,
    /// `""`: users with spend and no entry in the seats config.
    pub role: String,
    pub users: u64,
    /// Seat cost per user and month of the role.
    pub seat_micros: Micros,
    pub seats_micros: Micros,
    pub usage_micros: Micros,
    pub total_micros: Micros,
    pub band_min_micros: Option<Micros>,
    pub band_max_micros: Option<Micros>,
    pub users_below_band: u64,
    pub users_above_band: u64,
    /// Sorted by user id (never by spend).
    pub outside_band: Vec<OutsideBand>,
}

/// The report for one month: `usage` is the ledger's spend per (team, user) in the month.
pub fn report(seats: &Seats, usage: &[(String, String, Micros)]) -> Vec<TeamRoleRow> {
    let mut per_user: BTreeMap<String, Micros> = BTreeMap::new();
    let mut unassigned: BTreeMap<(String, String), Micros> = BTreeMap::new();
    for (team, user, cost) in usage {
        if user.is_empty() {
            continue;
        }
        if seats.spec.users.contains_key(user) {
            let e = per_user.entry(user.clone()).or_default();
            *e = e.saturating_add(*cost);
        } else {
            let e = unassigned.entry((team.clone(), user.clone())).or_default();
            *e = e.saturating_add(*cost);
        }
    }
    let mut rows: BTreeMap<(String, String), TeamRoleRow> = BTreeMap::new();
    let empty = |team: &str, role: &str, seat: Micros, band: Option<(Micros, Micros)>| TeamRoleRow {
        team: team.to_owned(),
        role: role.to_owned(),
        users: 0,
        seat_micros: seat,
        seats_micros: 0,
        usage_micros: 0,
        total_micros: 0,
        band_min_micros: band.map(|b| b.0),
        band_max_micros: band.map(|b| b.1),
        users_below_band: 0,
        users_above_band: 0,
        outside_band: vec![],
    };
    for (user, u) in &seats.spec.users {
        let (seat, band) = seats.roles.get(&u.role).copied().unwrap_or((0, None));
        let usage = per_user.get(user).copied().unwrap_or(0);
        let total = seat.saturating_add(usage);
        let row = rows.entry((u.team.clone(), u.role.clone())).or_insert_with(|| empty(&u.team, &u.role, seat, band));
        row.users += 1;
        row.seats_micros = row.seats_micros.saturating_add(seat);
        row.usage_micros = row.usage_micros.saturating_add(usage);
        row.total_micros = row.total_micros.saturating_add(total);
        let direction = match band {
            Some((min, _)) if total < min => Some("below"),
            Some((_, max)) if total > max => Some("above"),
            _ => None,
        };
        if let Some(direction) = direction {
            if direction == "below" {
                row.users_below_band += 1;
            } else {
                row.users_above_band += 1;
            }
            row.outside_band.push(OutsideBand { user: user.clone(), direction, seats_micros: seat, usage_micros: usage, total_micros: total });
        }
    }
    for ((team, _user), cost) in unassigned {
        let row = rows.entry((team.clone(), String::new())).or_insert_with(|| empty(&team, "", 0, None));
        row.users += 1;
        row.usage_micros = row.usage_micros.saturating_add(cost);
        row.total_micros = row.total_micros.saturating_add(cost);
    }
    rows.into_values().collect()
}

/// CSV/table cells: one row per (team, role); users outside the band as `user:below|above`.
pub fn cells(rows: &[TeamRoleRow]) -> (Vec<String>, Vec<Vec<String>>) {
    let header = ["team", "role", "users", "seat_usd", "seats_usd", "usage_usd", "total_usd", "band_min_usd", "band_max_usd", "below_band", "above_band", "outside_band"]
        .map(String::from)
        .to_vec();
    let opt = |m: Option<Micros>| m.map(format_micros).unwrap_or_default();
    let cells = rows
        .iter()
        .map(|r| {
            vec![
                r.team.clone(),
                r.role.clone(),
                r.users.to_string(),
                format_micros(r.seat_micros),
                format_micros(r.seats_micros),
                format_micros(r.usage_micros),
                format_micros(r.total_micros),
                opt(r.band_min_micros),
                opt(r.band_max_micros),
                r.users_below_band.to_string(),
                r.users_above_band.to_string(),
                r.outside_band.iter().map(|o| format!("{}:{}", o.user, o.direction)).collect::<Vec<_>>().join(" "),
            ]
        })
        .collect();
    (header, cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SeatsSpec {
        serde_json::from_value(serde_json::json!({
            "products": {"assistant": "39.00", "ide-agent": "19.00"},
            "roles": {"deep-coding": {"seats": ["assistant", "ide-agent"], "band": {"min": "150", "max": "400"}},
                      "occasional": {"seats": ["assistant"]}},
            "users": {"alice": {"team": "platform", "role": "deep-coding"}, "bob": {"team": "platform", "role": "deep-coding"},
                      "carol": {"team": "platform", "role": "deep-coding"}, "dan": {"team": "search", "role": "occasional"}}
        }))
        .unwrap()
    }

    #[test]
    fn seats_and_usage_add_up_per_team_and_role_and_the_band_flags_both_directions() {
        let seats = Seats::from_spec(spec()).unwrap();
        let usage = vec![
            ("platform".to_string(), "alice".to_string(), 200_000_000), // 58 + 200 = 258: inside
            ("platform".into(), "bob".into(), 10_000_000),               // 68: below 150
            ("search".into(), "bob".into(), 5_000_000),                  // bob's usage counts wherever it was spent: 73
            ("platform".into(), "carol".into(), 380_000_000),            // 438: above 400
            ("search".into(), "erin".into(), 7_000_000),                 // no entry: shown, no seat, no band
        ];
        let rows = report(&seats, &usage);
        assert_eq!(rows.len(), 3);
        let deep = &rows[0];
        assert_eq!((deep.team.as_str(), deep.role.as_str(), deep.users, deep.seat_micros), ("platform", "deep-coding", 3, 58_000_000));
        assert_eq!((deep.seats_micros, deep.usage_micros, deep.total_micros), (174_000_000, 595_000_000, 769_000_000));
        assert_eq!((deep.users_below_band, deep.users_above_band), (1, 1));
        assert_eq!(deep.outside_band.iter().map(|o| (o.user.as_str(), o.direction, o.total_micros)).collect::<Vec<_>>(), [("bob", "below", 73_000_000), ("carol", "above", 438_000_000)]);
        assert_eq!((rows[1].team.as_str(), rows[1].role.as_str(), rows[1].usage_micros, rows[1].band_min_micros), ("search", "", 7_000_000, None));
        assert_eq!((rows[2].role.as_str(), rows[2].total_micros, rows[2].users_below_band), ("occasional", 39_000_000, 0), "dan: seat only, no band");
    }

    #[test]
    fn bad_configs_name_the_field() {
        let err = |f: &dyn Fn(&mut SeatsSpec)| {
            let mut s = spec();
            f(&mut s);
            Seats::from_spec(s).unwrap_err()
        };
        assert!(err(&|s| { s.products.insert("assistant".into(), "-1".into()); }).starts_with("products.assistant:"));
        assert!(err(&|s| s.roles.get_mut("occasional").unwrap().seats.push("tv".into())).starts_with("roles.occasional.seats[1]:"));
        assert!(err(&|s| s.roles.get_mut("deep-coding").unwrap().band = Some(Band { min: "400".into(), max: "150".into() })).starts_with("roles.deep-coding.band.max:"));
        assert!(err(&|s| s.users.get_mut("dan").unwrap().role = "pilot".into()).starts_with("users.dan.role:"));
        assert!(err(&|s| s.users.get_mut("dan").unwrap().team = "no team".into()).starts_with("users.dan.team:"));
    }
}
