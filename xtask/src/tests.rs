//! Unit tests of xtask: the PostgreSQL opt-outs of `cargo xtask test`.

use super::*;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn the_postgres_pass_is_every_suite_but_the_opted_out() {
    let suites = names(&["a", "b", "c"]);
    let only_b = [("b", PgOptOut::StartsNoHost("why"))];
    assert_eq!(pg_suites(&suites, &only_b).unwrap(), names(&["a", "c"]));
    assert_eq!(pg_suites(&suites, &[]).unwrap(), suites);
}

#[test]
fn an_opt_out_that_names_no_suite_is_an_error() {
    let suites = names(&["a", "b"]);
    let stale = [("gone", PgOptOut::SqliteOnly("it was deleted"))];
    let err = pg_suites(&suites, &stale).unwrap_err();
    assert!(err.contains("\"gone\"") && err.contains("names no suite"), "{err}");
    let twice = [("a", PgOptOut::StartsNoHost("x")), ("a", PgOptOut::AlwaysPostgres("y"))];
    assert!(pg_suites(&suites, &twice).unwrap_err().contains("twice"));
}

#[test]
fn every_opt_out_names_a_suite_of_this_repository() {
    let suites = e2e_suites(&root().join("tests")).unwrap();
    assert!(suites.iter().any(|s| s == "ingest"), "{suites:?}");
    let on_postgres = pg_suites(&suites, PG_OPT_OUTS).unwrap();
    assert_eq!(on_postgres.len() + PG_OPT_OUTS.len(), suites.len());
}

#[test]
fn the_opt_outs_reach_the_testkit_as_suite_kind_pairs() {
    let value = opt_outs_value();
    for (name, why) in PG_OPT_OUTS {
        assert!(
            value.split(',').any(|p| p == format!("{name}={}", why.kind())),
            "{value}"
        );
    }
}
