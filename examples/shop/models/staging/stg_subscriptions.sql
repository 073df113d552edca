-- raw.subscriptions is a change log: one row per state change, the latest one wins.
with source as (

    select * from {{ source('raw', 'subscriptions') }}

),

latest as (

    select *
    from source
    qualify row_number() over (
        partition by subscription_id
        order by updated_at desc, _loaded_at desc
    ) = 1

),

renamed as (

    select
        subscription_id,
        customer_id,
        plan_id,
        status as subscription_status,
        started_at,
        cancelled_at,
        updated_at,
        _loaded_at

    from latest

)

select * from renamed
