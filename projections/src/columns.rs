//! Rows written with one statement per table: `INSERT … SELECT … FROM UNNEST($1::text[], $2::int8[], …)`
//! takes one array per column, so rows kept as tuples (in the order of the columns they fill) are turned
//! into columns and bound in that order.

use sqlx::postgres::{PgArguments, Postgres};
use sqlx::query::Query;

/// A statement being bound.
pub type PgQuery<'q> = Query<'q, Postgres, PgArguments>;

/// A row as a tuple of column values; see [`bind_rows`].
pub trait Row: Sized {
    /// Binds `rows` to `q` as one array per field: the first fields as the next `$n`, the second fields as
    /// the one after, …
    fn bind_columns<'q>(rows: Vec<Self>, q: PgQuery<'q>) -> PgQuery<'q>;
}

/// `rows` bound to `q` as one array per column, in column order.
pub fn bind_rows<'q, R: Row>(q: PgQuery<'q>, rows: Vec<R>) -> PgQuery<'q> {
    R::bind_columns(rows, q)
}

macro_rules! row_of {
    ($($t:ident $i:tt),+) => {
        impl<$($t),+> Row for ($($t,)+)
        where
            $(Vec<$t>: for<'e> sqlx::Encode<'e, Postgres> + sqlx::Type<Postgres>,)+
        {
            fn bind_columns<'q>(rows: Vec<Self>, q: PgQuery<'q>) -> PgQuery<'q> {
                let mut columns: ($(Vec<$t>,)+) = Default::default();
                for row in rows {
                    $(columns.$i.push(row.$i);)+
                }
                q$(.bind(columns.$i))+
            }
        }
    };
}

row_of!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
row_of!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
row_of!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9);
row_of!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10);
