//! Client-protocol scenarios written once and run over both wire formats:
//! `ws_json.rs` and `ws_protobuf.rs` each expand `all_scenarios!` with their format.

pub mod auth_flows;
pub mod commands;
pub mod pushes;
pub mod recovery;

/// One `#[tokio::test]` per scenario, all run with `$wire`.
#[macro_export]
macro_rules! all_scenarios {
    ($wire:expr) => {
        $crate::all_scenarios!(@tests $wire;
            commands::connect_result,
            commands::subscribe_and_unsubscribe,
            commands::publish_reaches_subscribers,
            commands::presence_lists_subscribers,
            commands::presence_stats_counts_clients_and_users,
            commands::history_limit_since_reverse,
            commands::history_errors,
            commands::rpc_unknown_method_is_104,
            commands::send_has_no_reply,
            commands::batch_in_one_frame_gets_every_reply,
            auth_flows::refresh_extends_connection,
            auth_flows::refresh_for_another_user_closes_3500,
            auth_flows::subscription_token_and_sub_refresh,
            auth_flows::refresh_with_expired_token_closes_3005,
            auth_flows::connection_expires_without_refresh_3005,
            auth_flows::subscription_expires_without_sub_refresh_3006,
            auth_flows::expired_subscription_tokens_are_109,
            auth_flows::subscription_token_info_is_chan_info,
            auth_flows::anonymous_connect_when_allowed,
            pushes::join_and_leave_pushes,
            pushes::leave_carries_the_same_client_info_as_join,
            pushes::server_side_subscriptions_from_token,
            pushes::server_side_subscription_recovers_on_reconnect,
            pushes::server_pings_answered_keep_connection,
            pushes::no_pong_closes_3012,
            pushes::personal_channel_subscription,
            pushes::publications_reach_subscribers_of_the_other_format,
            recovery::recover_missed_publications_after_unsubscribe,
            recovery::recover_missed_publications_after_reconnect,
            recovery::position_older_than_history_is_not_recovered,
            recovery::wrong_epoch_is_not_recovered,
            recovery::positioned_subscription_reports_position,
        );
    };
    (@tests $wire:expr; $($module:ident :: $name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                scenarios::$module::$name($wire).await
            }
        )*
    };
}
