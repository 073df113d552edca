-- One row per subscription: the days it was billable and what it was worth per month.
with subscriptions as (

    select * from {{ ref('stg_subscriptions') }}

),

plans as (

    select * from {{ ref('stg_plans') }}

),

periods as (

    select
        subscriptions.subscription_id,
        subscriptions.customer_id,
        subscriptions.plan_id,
        plans.plan_name,
        plans.monthly_price as monthly_amount,
        subscriptions.subscription_status,
        cast(subscriptions.started_at as date) as valid_from,
        cast(subscriptions.cancelled_at as date) as valid_to,
        subscriptions.cancelled_at is null as is_current

    from subscriptions
    inner join plans using (plan_id)

)

select * from periods
