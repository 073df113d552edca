-- Monthly recurring revenue as of each day, from the first subscription to the latest change.
with periods as (

    select * from {{ ref('int_subscription_periods') }}

),

subscriptions as (

    select * from {{ ref('stg_subscriptions') }}

),

days as (

    {{ date_spine('subscriptions', 'started_at', 'updated_at') }}

),

active as (

    select
        days.date_day,
        count(periods.subscription_id) as active_subscriptions,
        coalesce(sum(periods.monthly_amount), 0) as mrr

    from days
    left join periods
        on periods.valid_from <= days.date_day
        and coalesce(periods.valid_to, date '9999-12-31') > days.date_day
    group by days.date_day

),

started as (

    select
        valid_from as date_day,
        count(*) as new_subscriptions,
        sum(monthly_amount) as new_mrr

    from periods
    group by valid_from

),

churned as (

    select
        valid_to as date_day,
        count(*) as churned_subscriptions,
        sum(monthly_amount) as churned_mrr

    from periods
    where valid_to is not null
    group by valid_to

),

final as (

    select
        active.date_day,
        active.active_subscriptions,
        active.mrr,
        coalesce(started.new_subscriptions, 0) as new_subscriptions,
        coalesce(started.new_mrr, 0) as new_mrr,
        coalesce(churned.churned_subscriptions, 0) as churned_subscriptions,
        coalesce(churned.churned_mrr, 0) as churned_mrr

    from active
    left join started using (date_day)
    left join churned using (date_day)

)

select * from final
